"""REST predict's numpy fast path (``serving/rest_fast.py``): the same tensors as the ordinary JSON path, always.

The property (hypothesis): for any body built from dense or damaged nested lists, whenever the fast path takes a
body, the ordinary path (``rest_json``) accepts the same body and gives the same format, dtype, shape and values.
Over real sockets: a 640x480 image sent as JSON numbers gets the same answer through the fast path as through the
ordinary one.  ``ODAL_FUZZ_EXAMPLES`` sets the number of examples (as in test_serving_fuzz.py).
"""

from __future__ import annotations

import http.client
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odal.serving import rest_fast, rest_json
from odal.serving._protos import types_pb2
from odal.serving.errors import ServingError

pytest_plugins = ["serving_fixtures"]

EXAMPLES = int(os.environ.get("ODAL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [types_pb2.DT_UINT8, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE,
          types_pb2.DT_INT8, types_pb2.DT_STRING, types_pb2.DT_BOOL]
DAMAGE = [b"", b" ", b"\n", b",", b"[", b"]", b"0", b"7", b"-", b".", b"e", b"00", b"]]", b"[[", b", ", b"\t"]


@st.composite
def bodies(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    high = draw(st.sampled_from([9, 255, 300, 2**24, 2**31, 2**53 + 1, 10**17]))
    values = draw(st.lists(st.integers(0, high), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    tree = np.array(values, dtype=object).reshape(shape).tolist() if shape else (values[0] if values else 0)
    key = draw(st.sampled_from(["instances", "inputs"]))
    doc = {key: tree}
    if draw(st.booleans()):
        doc["signature_name"] = draw(st.sampled_from(["", "serving_default", "[1]", "a\\b"]))
    separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,", ":")]))
    body = json.dumps(doc, separators=separators, indent=draw(st.sampled_from([None, None, 1]))).encode()
    for _ in range(draw(st.integers(0, 2))):  # damage: insert, replace or delete a few bytes
        at = draw(st.integers(0, len(body)))
        cut = draw(st.integers(0, 2))
        body = body[:at] + draw(st.sampled_from(DAMAGE)) + body[at + cut:]
    return body


def _slow(body: bytes, dtypes: dict) -> tuple[str, dict]:
    doc = rest_json.parse_body(body)
    return rest_json.request_tensors(doc, dtypes, rest_json.signature_name(doc))


@FUZZ
@given(body=bodies(), dtype=st.sampled_from(DTYPES))
def test_whenever_the_fast_path_takes_a_body_it_gives_the_ordinary_paths_tensors(body, dtype):
    dtypes = {"input_tensor": dtype}
    split = rest_fast.split(body, min_bytes=0)
    fast = rest_fast.request_tensors(split, dtypes) if split is not None else None
    if fast is None:
        return
    try:
        fmt, inputs = _slow(body, dtypes)
    except ServingError as exc:
        raise AssertionError(f"fast path took a body the ordinary path refuses ({exc.message}): {body[:300]!r}")
    assert fast[0] == fmt
    got, want = fast[1]["input_tensor"], inputs["input_tensor"]
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), body[:300]


def test_an_image_as_json_numbers_takes_the_fast_path_with_the_exact_pixels():
    image = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    for doc, fmt in (({"instances": image.tolist()}, rest_json.ROW), ({"inputs": image.tolist()}, rest_json.COLUMNAR)):
        split = rest_fast.split(json.dumps(doc).encode())
        assert split is not None
        got_fmt, inputs = rest_fast.request_tensors(split, {"input_tensor": types_pb2.DT_UINT8})
        assert got_fmt == fmt and inputs["input_tensor"].dtype == np.uint8
        assert np.array_equal(inputs["input_tensor"], image)


def _post(port: int, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/models/m:predict", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_rest_predict_of_a_640x480_image_answers_the_same_through_the_fast_and_the_ordinary_path(small_server):
    image = np.random.default_rng(1).integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    fast_body = json.dumps({"instances": image.tolist()}).encode()
    # an escape in the rest of the body: the whole body goes the ordinary way
    slow_body = fast_body[:-1] + b', "signature_name": "serving\\u005fdefault"}'
    assert rest_fast.split(fast_body) is not None and rest_fast.split(slow_body) is None
    fast_status, fast_answer = _post(small_server.rest_port, fast_body)
    slow_status, slow_answer = _post(small_server.rest_port, slow_body)
    assert fast_status == slow_status == 200
    assert fast_answer == slow_answer
    expected = image.reshape(-1, 3).mean(axis=0)
    assert np.allclose(fast_answer["predictions"][0], expected, rtol=1e-5)
    bad = fast_body.replace(b"[", b"[-1, ", 1)  # a negative: ordinary path, 400 with TF Serving's message
    status, answer = _post(small_server.rest_port, bad)
    assert status == 400 and "error" in answer
