"""REST predict's fast path (``serving/rest_fast.py``: the C parser ``_restparse``, the numpy parse as fallback):
the same tensors as the ordinary JSON path, always.

Properties (hypothesis): for any body built from dense or damaged nested lists, whenever the fast path (either
parser) takes a body, the ordinary path (``rest_json``) accepts the same body and gives the same format, dtype,
shape and values; the C parser takes every dense array of every type it serves and gives what orjson +
``np.asarray`` give (the reference); it takes no text the reference cannot read, or reads differently; both parsers
agree.  Over real sockets: a 640x480 image sent as JSON numbers gets the same answer through the fast path as
through the ordinary one.  ``ODAL_FUZZ_EXAMPLES`` sets the number of examples (as in test_serving_fuzz.py).
"""

from __future__ import annotations

import http.client
import json
import os

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odal.serving import json_floats, rest_fast, rest_json, tensors
from odal.serving._protos import types_pb2
from odal.serving.errors import ServingError

pytest_plugins = ["serving_fixtures"]

EXAMPLES = int(os.environ.get("ODAL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [types_pb2.DT_UINT8, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE,
          types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64, types_pb2.DT_HALF,
          types_pb2.DT_STRING, types_pb2.DT_BOOL]
DAMAGE = [b"", b" ", b"\n", b",", b"[", b"]", b"0", b"7", b"-", b".", b"e", b"00", b"]]", b"[[", b", ", b"\t",
          b"-0", b"1.", b".5", b"e+", b"E-9", b"+", b"0.0", b"1e400", b"--"]
# Decimals of at most 15 digits and exponents within 22 (the C parser's exact short path: one rounding)
SHORT_DECIMALS = st.builds(lambda digits, scale: float(f"{digits}e{scale}"), st.integers(-(10**15), 10**15),
                           st.integers(-22, 22))
# The types the C parser serves, and values of each that it must take (ints in the type's range; for floats, any
# finite value of the type, and integers up to the float's exact limit)
C_VALUES = {
    types_pb2.DT_UINT8: st.integers(0, 255), types_pb2.DT_INT8: st.integers(-128, 127),
    types_pb2.DT_INT16: st.integers(-(2**15), 2**15 - 1), types_pb2.DT_INT32: st.integers(-(2**31), 2**31 - 1),
    types_pb2.DT_UINT32: st.integers(0, 2**32 - 1), types_pb2.DT_INT64: st.integers(-(2**63), 2**63 - 1),
    types_pb2.DT_FLOAT: st.floats(width=32, allow_nan=False, allow_infinity=False).map(float)
    | st.integers(-(2**24 - 1), 2**24 - 1) | SHORT_DECIMALS.filter(lambda value: abs(value) < 3e38),
    types_pb2.DT_DOUBLE: st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53 - 1), 2**53 - 1)
    | SHORT_DECIMALS,
}


@st.composite
def bodies(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    high = draw(st.sampled_from([9, 255, 300, 2**24, 2**31, 2**53 + 1, 10**17, 2**64]))
    low = draw(st.sampled_from([0, 0, -1, -129, -(2**31) - 1, -(2**63) - 1]))
    leaf = st.integers(low, high) | st.floats(allow_nan=False) if draw(st.booleans()) else st.integers(low, high)
    values = draw(st.lists(leaf, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
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
@given(body=bodies(), dtype=st.sampled_from(DTYPES), parser=st.sampled_from(["c", "numpy"]))
def test_whenever_the_fast_path_takes_a_body_it_gives_the_ordinary_paths_tensors(body, dtype, parser):
    dtypes = {"input_tensor": dtype}
    with pytest.MonkeyPatch.context() as patch:
        if parser == "numpy":
            patch.setattr(rest_fast, "_restparse", None)  # as when the extension was not built
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


def _reference(run: bytes, dtype: int) -> np.ndarray:
    return np.asarray(orjson.loads(run)).astype(tensors.numpy_dtype(dtype))


@st.composite
def dense_runs(draw):
    """(JSON text of a dense array of one C-served type, that type): any rank 1-4, sizes 1-4, any spacing."""
    dtype = draw(st.sampled_from(sorted(C_VALUES)))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    values = draw(st.lists(C_VALUES[dtype], min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    tree = np.array(values, dtype=object).reshape(shape).tolist()
    if draw(st.booleans()):
        run = orjson.dumps(tree)
    else:
        separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,\t", ":")]))
        run = json.dumps(tree, separators=separators, indent=draw(st.sampled_from([None, 1, "\r\n"]))).encode()
    return run, dtype


@FUZZ
@given(case=dense_runs())
def test_the_c_parser_takes_every_dense_array_of_its_types_with_the_references_values(case):
    run, dtype = case
    got = rest_fast.parse_c(run, dtype)
    assert got is not None, run[:300]
    want = _reference(run, dtype)
    assert got.dtype == want.dtype and got.shape == want.shape, run[:300]
    assert np.array_equal(got, want) and got.tobytes() == want.tobytes(), run[:300]


@FUZZ
@given(case=dense_runs(), damage=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(DAMAGE),
                                                     st.integers(0, 2)), min_size=1, max_size=3))
def test_the_c_parser_takes_no_text_the_reference_reads_otherwise(case, damage):
    run, dtype = case
    for at, junk, cut in damage:
        at %= len(run) + 1
        run = run[:at] + junk + run[at + cut:]
    got = rest_fast.parse_c(run, dtype)
    if got is None:
        return
    try:
        tree = orjson.loads(run)
    except orjson.JSONDecodeError:
        raise AssertionError(f"the C parser took text that is not JSON: {run[:300]!r}") from None
    want = np.asarray(tree)
    assert want.dtype.kind in "iuf" and list(want.shape) == rest_json._dense_shape(tree), run[:300]
    assert got.shape == want.shape and np.array_equal(got, want.astype(got.dtype)), run[:300]


@FUZZ
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), dtype=st.sampled_from(
    [types_pb2.DT_UINT8, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT]), data=st.data())
def test_the_c_parser_and_the_numpy_parse_agree(shape, dtype, data):
    high = 255 if dtype == types_pb2.DT_UINT8 else 2**24 - 1
    values = data.draw(st.lists(st.integers(0, high), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    run = json.dumps(np.array(values, dtype=object).reshape(shape).tolist()).encode()
    by_c, by_numpy = rest_fast.parse_c(run, dtype), rest_fast.parse_ints(run, dtype)
    assert by_c is not None and by_numpy is not None
    assert by_c.dtype == by_numpy.dtype and by_c.shape == by_numpy.shape and np.array_equal(by_c, by_numpy)


def test_the_c_parser_is_built_and_serves_the_fast_path():
    assert rest_fast._restparse is not None, "serving/_restparse.c was not built at pip install (gcc, Python headers?)"
    run = b"[[1, 2], [3, 4]]"
    assert rest_fast.parse(run, types_pb2.DT_UINT8).tolist() == [[1, 2], [3, 4]]
    assert rest_fast.parse(b"[-1.5, 2e3]", types_pb2.DT_FLOAT).tolist() == [-1.5, 2000.0]  # the numpy parse: None


def test_the_c_parser_keeps_to_its_bounds():
    deep = b"[" * (tensors.MAX_RANK + 1) + b"1" + b"]" * (tensors.MAX_RANK + 1)
    assert rest_fast.parse_c(deep, types_pb2.DT_UINT8) is None
    assert rest_fast.parse_c(deep[1:-1], types_pb2.DT_UINT8).shape == (1,) * tensors.MAX_RANK
    run = b"[" + b",".join([b"1"] * 1000) + b"]"
    assert rest_fast.parse_c(run, types_pb2.DT_FLOAT, max_bytes=3996) is None  # 1000 floats are 4000 bytes
    assert rest_fast.parse_c(run, types_pb2.DT_FLOAT, max_bytes=4000).shape == (1000,)
    for text, dtype in ((b"[256]", types_pb2.DT_UINT8), (b"[-129]", types_pb2.DT_INT8), (b"[1e39]", types_pb2.DT_FLOAT),
                        (b"[9223372036854775808]", types_pb2.DT_INT64), (b"[16777217]", types_pb2.DT_FLOAT),
                        (b"[1.5]", types_pb2.DT_INT32), (b"[[1,2],[3]]", types_pb2.DT_UINT8), (b"[[]]", types_pb2.DT_UINT8),
                        (b"[1e999]", types_pb2.DT_DOUBLE), (b"[01]", types_pb2.DT_UINT8), (b"[1] x", types_pb2.DT_UINT8)):
        assert rest_fast.parse_c(text, dtype) is None, text


def test_an_image_as_json_numbers_takes_the_fast_path_with_the_exact_pixels():
    image = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    assert rest_fast._restparse is not None
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


@FUZZ
@given(wide=st.booleans(), data=st.data())
def test_floats_are_written_the_same_by_the_c_formatter_and_the_numpy_one(wide, data):
    values = data.draw(st.lists(st.floats(width=64 if wide else 32), min_size=1, max_size=50))
    array = np.array(values, dtype=np.float64 if wide else np.float32)
    assert json_floats._restparse is not None
    assert json_floats.texts(array) == json_floats.numpy_texts(array)
