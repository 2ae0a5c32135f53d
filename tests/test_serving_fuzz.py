"""Property-based fuzzing (hypothesis) of the server's request decoders: REST JSON bodies and gRPC TensorProtos.

Invariant: bad input is never a 500 / INTERNAL / UNKNOWN (it is the client's fault, and says so), the server
stays up, and a good predict still answers after.  In-process runs (many examples) call the real REST handler and
the real tensor decoder + predict path on a real SavedModel; the socket runs (fewer) send the same kind of input
to a real ``odal serve`` process.

``make test`` runs 300 examples per in-process property and 50 per socket property; the long mode:
``ODAL_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_serving_fuzz.py -q``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.parse

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odal.serving import discovery, predict, tensors
from odal.serving._protos import predict_pb2, prediction_service_pb2_grpc, tensor_pb2, types_pb2
from odal.serving.client import ServingClient
from odal.serving.errors import ServingError
from odal.serving.limits import DEFAULT

pytest_plugins = ["serving_fixtures"]  # small_model_base, small_server: one server for both test modules

EXAMPLES = int(os.environ.get("ODAL_FUZZ_EXAMPLES", "300"))
SOCKET_EXAMPLES = max(EXAMPLES // 6, 20)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
SOCKET_FUZZ = settings(FUZZ, max_examples=SOCKET_EXAMPLES)
CLIENT_FAULTS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNIMPLEMENTED", "OUT_OF_RANGE",
                 "RESOURCE_EXHAUSTED"}
IMAGE = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
GOOD = json.dumps({"instances": IMAGE.tolist()}).encode()
# An image body past rest_fast.MIN_FAST_BYTES: it and its damaged copies go through the C parser first
BIG = json.dumps({"instances": np.random.default_rng(3).integers(0, 256, (1, 20, 24, 3)).tolist()}).encode()
BIG_DAMAGE = [b"", b"-", b"-1", b"1.5", b"e9", b"[", b"]", b",", b"00", b"1e400", b"99999999999999999999", b"\x00",
              b'"', b"\\", b"NaN", b"]]", b"[[", b" ", b"1,", b"],[", b"2]"]


# ---- strategies -------------------------------------------------------------------------------------------

huge_ints = st.integers(min_value=-(10**40), max_value=10**40) | st.sampled_from([2**63, -(2**63) - 1, 2**64])
scalars = (st.none() | st.booleans() | st.integers(0, 255) | huge_ints | st.floats() | st.text(max_size=8)
           | st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=8))
           | st.builds(lambda t: {"b64": t}, st.text(max_size=8)))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=24)


@st.composite
def near_images(draw):
    """Nested lists shaped almost like the model's input [1, H, W, 3]: right or wrong rank, sizes and leaves."""
    shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=5) | st.just([1, 2, 2, 3]))
    leaf = draw(st.sampled_from(["byte", "big", "float", "bool", "str", "any"]))
    values = {"byte": st.integers(0, 255), "big": huge_ints, "float": st.floats(), "bool": st.booleans(),
              "str": st.text(max_size=3), "any": scalars}[leaf]

    def build(dims):
        if not dims:
            return draw(values)
        return [build(dims[1:]) for _ in range(dims[0])]

    return build(shape)


@st.composite
def predict_docs(draw):
    doc = {}
    if draw(st.booleans()):
        doc["instances"] = draw(near_images() | json_values)
    if draw(st.booleans()):
        doc["inputs"] = draw(near_images() | st.dictionaries(st.sampled_from(["input_tensor", "x"]),
                                                             near_images(), max_size=2) | json_values)
    if draw(st.integers(0, 3)) == 0:
        doc["signature_name"] = draw(st.sampled_from(["", "serving_default", "nope"]) | json_values)
    if draw(st.integers(0, 3)) == 0:
        doc.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return doc if draw(st.integers(0, 5)) else draw(json_values)


def _dumps(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


bodies = (predict_docs().map(_dumps)
          | st.binary(max_size=64)
          | st.builds(lambda doc, cut: _dumps(doc)[:cut], predict_docs(), st.integers(0, 40))
          | st.builds(lambda doc, junk: _dumps(doc) + junk, predict_docs(), st.sampled_from([b"\xff", b"\x00", b"]"]))
          | st.builds(lambda depth: b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}",
                      st.integers(1, 3000))
          | st.builds(lambda digits: b'{"instances": [' + b"7" * digits + b"]}", st.integers(1, 6000)))
paths = st.sampled_from([
    "/v1/models/m:predict", "/v1/models/m/versions/1:predict", "/v1/models/m/versions/99999999999999999999:predict",
    "/v1/models/m/labels/x:predict", "/v1/models/%ff%00:predict", "/v1/models/m:classify", "/v1/models/m",
    "/v1/models/m/metadata", "/v1/models/m/versions/1", "/v1/models//versions/:predict", "/v1/", "/",
]) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(lambda t: "/v1/" + t)
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"])

DTYPES = [value for value in types_pb2.DataType.values()]
_FIELDS = {
    "float_val": st.floats(width=32), "double_val": st.floats(), "int_val": st.integers(-(2**31), 2**31 - 1),
    "int64_val": st.integers(-(2**63), 2**63 - 1), "string_val": st.binary(max_size=8), "bool_val": st.booleans(),
    "half_val": st.integers(-(2**31), 2**31 - 1), "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1), "scomplex_val": st.floats(width=32), "dcomplex_val": st.floats(),
}


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    proto.dtype = draw(st.sampled_from(DTYPES) | st.integers(-3, 400) | st.just(types_pb2.DT_UINT8))
    shape = draw(st.lists(st.integers(0, 4) | st.integers(-3, 2**62), max_size=6) | st.just([1, 2, 3, 3]))
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.tensor_shape.unknown_rank = draw(st.integers(0, 9)) == 0
    how = draw(st.sampled_from(["content", "field", "both", "none"]))
    if how in ("content", "both"):
        proto.tensor_content = draw(st.binary(max_size=80))
    if how in ("field", "both"):
        field = draw(st.sampled_from(sorted(_FIELDS)))
        getattr(proto, field).extend(draw(st.lists(_FIELDS[field], max_size=40)))
    return proto


# ---- in-process ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(small_model_base):
    from odal.serving import loader
    from odal.serving.registry import Registry

    with Registry(loader.Servable, poll_seconds=0) as registry:
        registry.reload(discovery.single_model_config("m", str(small_model_base)), wait_seconds=120)
        yield registry


@pytest.fixture(scope="module")
def rest(registry):
    """The REST request handler the server runs for each request, called directly."""
    from odal.serving.rest_api import RestApi

    api = RestApi(registry)

    def handle(method: str, target: str, body: bytes) -> tuple[int, bytes, str]:
        status, text = api.handle(method, urllib.parse.urlsplit(target).path, body)
        return status, text.encode(), "application/json"

    return handle


def _check_rest_answer(status: int, payload: bytes) -> None:
    assert status < 500 or status == 501, payload[:500]
    if payload:
        answer = json.loads(payload)
        assert set(answer) <= {"error", "predictions", "outputs", "model_version_status", "model_spec", "metadata"}
        assert len(payload) < 4096 or "error" not in answer


@FUZZ
@given(method=methods, path=paths, body=bodies)
def test_rest_handler_answers_bad_requests_with_a_4xx_never_a_500(rest, method, path, body):
    status, payload, _ = rest(method, path, body)
    _check_rest_answer(status, payload)


@FUZZ
@given(damage=st.lists(st.tuples(st.integers(0, len(BIG)), st.sampled_from(BIG_DAMAGE), st.integers(0, 3)),
                       min_size=1, max_size=3))
def test_rest_handler_answers_damaged_image_bodies_with_a_4xx_never_a_500(rest, damage):
    body = BIG
    for at, junk, cut in damage:
        body = body[:at] + junk + body[at + cut:]
    status, payload, _ = rest("POST", "/v1/models/m:predict", body)
    _check_rest_answer(status, payload)


def test_rest_handler_still_predicts_after_the_fuzzing(rest):
    status, payload, _ = rest("POST", "/v1/models/m:predict", GOOD)
    assert status == 200 and json.loads(payload)["predictions"][0] == pytest.approx([7.5, 8.5, 9.5])
    status, payload, _ = rest("POST", "/v1/models/m:predict", BIG)
    image = np.array(json.loads(BIG)["instances"], dtype=np.float64)
    assert status == 200 and json.loads(payload)["predictions"][0] == pytest.approx(image.mean(axis=(0, 1, 2)))


@FUZZ
@given(proto=tensor_protos(), alias=st.sampled_from(["input_tensor"] * 4 + ["x"]))
def test_grpc_tensor_decoding_and_predict_fail_only_with_client_statuses(registry, proto, alias):
    try:
        array = tensors.from_proto(proto)
        assert array.nbytes <= DEFAULT.max_tensor_bytes
        predict.run(registry, predict.Target("m"), "", {alias: array})
    except ServingError as exc:
        assert exc.code in CLIENT_FAULTS, f"{exc.code}: {exc.message}"


def test_a_fill_of_the_declared_shape_is_bounded_but_tf_servings_single_value_fill_still_works():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (1, 1000, 1000, 3):
        proto.tensor_shape.dim.add().size = size
    proto.float_val.append(1.0)
    with pytest.raises(ServingError, match="declares 12000000 bytes but carries 4"):
        tensors.from_proto(proto)
    del proto.tensor_shape.dim[1:]
    proto.tensor_shape.dim.add().size = 1000
    assert tensors.from_proto(proto).tolist() == [[1.0] * 1000]


# ---- over sockets ------------------------------------------------------------------------------------------

@pytest.fixture
def server(small_server):
    return small_server


@pytest.fixture(scope="module")
def connection(small_server):
    conn = http.client.HTTPConnection("127.0.0.1", small_server.rest_port, timeout=60)
    yield conn
    conn.close()


def _send(conn: http.client.HTTPConnection, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    for attempt in range(2):  # the server may close a connection after an error: reconnect once
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            return answer.status, answer.read()
        except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
            conn.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


@SOCKET_FUZZ
@given(method=methods, path=paths.filter(lambda p: all(c not in p for c in " \r\n")), body=bodies)
def test_rest_over_a_socket_answers_bad_requests_with_a_4xx(connection, method, path, body):
    status, payload = _send(connection, method, path, body)
    _check_rest_answer(status, payload)


@SOCKET_FUZZ
@given(proto=tensor_protos())
def test_grpc_over_a_socket_answers_bad_tensors_with_client_statuses(server, proto):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["input_tensor"].CopyFrom(proto)
    with grpc.insecure_channel(server.address) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code().name in CLIENT_FAULTS, f"{exc.code()}: {exc.details()}"


def test_the_server_still_predicts_after_the_socket_fuzzing(server, connection):
    status, payload = _send(connection, "POST", "/v1/models/m:predict", GOOD)
    assert status == 200 and json.loads(payload)["predictions"][0] == pytest.approx([7.5, 8.5, 9.5])
    with ServingClient(server.address, timeout=60) as client:
        outputs, _ = client.predict_tensors("m", {"input_tensor": IMAGE})
    assert outputs["mean"].tolist() == [[7.5, 8.5, 9.5]]
