"""The fast path of REST predict: an image sent as JSON numbers parsed straight from the body into a numpy array.

TF Serving's REST API sends pixels as nested lists of numbers (``{"instances": [[[[r, g, b], ...]]]}``): 3.9 MB
of JSON for a 640x480 image.  Parsing that into Python lists and then into an array costs ~100x the model call.
Here the one big run of bytes made only of number characters, commas, brackets and whitespace is cut out of the
body and decoded in one pass by the C extension ``_restparse`` (strict JSON numbers, dense shape, the dtype's
range; built at ``pip install``); the rest of the body (``signature_name``, keys) is parsed with orjson.  Without
the extension (no compiler at install) a numpy parse serves, for non-negative integers only.

Only what is certainly a valid, dense tensor that fits the input's type takes this path; anything else (ragged
lists, leading zeros, several inputs, a value out of range, a body with escapes, and for the numpy parse
negatives and decimals...) returns ``None`` and goes through ``rest_json``, which gives TF Serving's messages.
The tensors are the same either way (``tests/test_serving_rest_fast.py`` checks that property with hypothesis).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import orjson

from odal.serving import rest_json, tensors
from odal.serving._protos import types_pb2
from odal.serving.limits import DEFAULT

try:
    from odal.serving import _restparse
except ImportError:  # built without a compiler: the numpy parse below serves
    _restparse = None

MIN_FAST_BYTES = 4096  # smaller numeric runs are parsed the ordinary way (as fast, and the messages are TF's)
_SENTINEL = "\x01odal-numeric-run\x01"  # written escaped; a body without backslashes cannot hold this string
_SENTINEL_JSON = b'"\\u0001odal-numeric-run\\u0001"'
_ALLOWED = b"0123456789,[] \t\n\r-+.eE"
_INTEGER_RUN = b"0123456789,[] \t\n\r"  # what the numpy parse handles
_SPACE = b" \t\n\r"
_DIGITS = b"0123456789"
_MAX_DIGITS = 16  # 2**53 has 16 digits; every such number fits int64; longer ones go the slow way
# DataType -> the largest value this path accepts: what the type holds (beyond it the slow path wraps or names
# the value) and what a float holds exactly (the slow path's lossless rule).  Other types go the slow way.
_LIMITS = {types_pb2.DT_UINT8: 255, types_pb2.DT_INT32: 2**31 - 1, types_pb2.DT_UINT32: 2**32 - 1,
           types_pb2.DT_INT64: 10**_MAX_DIGITS - 1, types_pb2.DT_FLOAT: (1 << 24) - 1,
           types_pb2.DT_DOUBLE: (1 << 53) - 1}
# DataTypes the C parser takes (those rest_json converts; int8/int16 only in their own range, where it wraps)
_C_TYPES = {types_pb2.DT_UINT8, types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_UINT32,
            types_pb2.DT_INT64, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE}


def _numeric_run(body: bytes, min_bytes: int) -> tuple[int, int] | None:
    """(start, end) of the span from the first ``[`` to the last ``]``, if it is long and all number-list bytes."""
    start, end = body.find(b"["), body.rfind(b"]") + 1
    if start < 0 or end - start < min_bytes or body[start:end].translate(None, _ALLOWED):
        return None
    return start, end


def split(body: bytes, min_bytes: int = MIN_FAST_BYTES) -> tuple[dict, str, bytes] | None:
    """(the body parsed with the numeric run replaced, the key holding it, the run) or None.

    The key is ``"instances"`` or ``"inputs"``, the run that key's whole value."""
    if not body:
        return None
    run = _numeric_run(body, min_bytes)
    if run is None:
        return None
    start, end = run
    prefix, suffix = body[:start], body[end:]
    if b"\\" in prefix or b"\\" in suffix or prefix.count(b'"') % 2:
        return None  # an escape, or the run is inside a string
    try:
        doc = orjson.loads(prefix + _SENTINEL_JSON + suffix)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        return None
    key = "instances" if "instances" in doc else "inputs"
    if doc[key] != _SENTINEL:
        return None
    return doc, key, body[start:end]


def _shape(skeleton: bytes) -> list[int] | None:
    """The dense shape of a skeleton (the list with its digits taken out), or None if it is not dense."""
    rank = len(skeleton) - len(skeleton.lstrip(b"["))
    if rank == 0 or rank > tensors.MAX_RANK:
        return None
    size = skeleton.count(b",", rank - 1, skeleton.find(b"]")) + 1
    shape = [size]
    text_len = size + 1  # "[,,...,]"
    for level in range(rank - 2, -1, -1):
        end = skeleton.find(b"]" * (rank - level)) + (rank - level)  # the first list at this level ends here
        length = end - level
        if length <= 0 or (length - 1) % (text_len + 1):
            return None
        count = (length - 1) // (text_len + 1)
        shape.insert(0, count)
        text_len = count * (text_len + 1) + 1
    expected = b""
    for size in reversed(shape):
        expected = b"[" + b",".join([expected] * size) + b"]"
    return shape if expected == skeleton else None


def parse_ints(run: bytes, dtype: int) -> np.ndarray | None:
    """A dense nested list of non-negative integers (JSON text) as an array of ``dtype``, or None."""
    limit = _LIMITS.get(dtype)
    if limit is None or run.translate(None, _INTEGER_RUN):
        return None
    compact = run.translate(None, _SPACE)
    if len(compact) != len(run):  # whitespace after a digit: "1 2" must not become 12 ("1 ," is valid: slow path)
        raw = np.frombuffer(run, np.uint8)
        space = raw[1:] <= 32  # (the only bytes <= 32 here are whitespace)
        if np.any(space & ((raw[:-1] - 48) < 10)):
            return None
    chars = np.frombuffer(compact, np.uint8)
    digit = (chars - 48) < 10
    if np.any(digit[:-1] & (chars[1:] == 91)) or np.any((chars[:-1] == 93) & digit[1:]):
        return None  # a number touching a bracket from outside: "1[" or "]1"
    shape = _shape(compact.translate(None, _DIGITS))
    if shape is None:
        return None
    text = compact.translate(None, b"[]")
    flat = np.frombuffer(text, np.uint8)
    bounds = np.concatenate(([-1], np.flatnonzero(flat == 44), [flat.size]))
    lengths = np.diff(bounds) - 1
    if lengths.min() < 1 or lengths.max() > _MAX_DIGITS:
        return None  # an empty number ("[1,,2]", "[]"), or one too long for this path
    if np.any(flat[bounds[:-1][lengths > 1] + 1] == 48):
        return None  # a leading zero (not JSON)
    values = np.fromstring(text, dtype=np.int16 if lengths.max() <= 4 else np.int64, sep=",")
    if values.size != lengths.size or values.size != int(np.prod(shape)) or values.max() > limit:
        return None
    return values.astype(tensors.numpy_dtype(dtype)).reshape(shape)


def parse_c(run: bytes, dtype: int, max_bytes: int = DEFAULT.max_tensor_bytes) -> np.ndarray | None:
    """A dense nested list of JSON numbers as an array of ``dtype`` by the C extension, or None."""
    if _restparse is None or dtype not in _C_TYPES:
        return None
    target = tensors.numpy_dtype(dtype)
    parsed = _restparse.parse(run, target.kind, target.itemsize, tensors.MAX_RANK, max_bytes)
    if parsed is None:
        return None
    buffer, shape = parsed
    return np.frombuffer(buffer, target).reshape(shape)


def parse(run: bytes, dtype: int) -> np.ndarray | None:
    """The run as an array of ``dtype`` by the C extension if built, else by the numpy parse; None: not taken."""
    return parse_c(run, dtype) if _restparse is not None else parse_ints(run, dtype)


def request_tensors(split_result: tuple[dict, str, bytes], input_dtypes: Mapping[str, int]
                    ) -> tuple[str, dict[str, Any]] | None:
    """(format, inputs) as ``rest_json.request_tensors`` gives them, for a single-input signature, or None."""
    doc, key, run = split_result
    if len(input_dtypes) != 1:
        return None
    (name, dtype), = input_dtypes.items()
    array = parse(run, dtype)
    if array is None:
        return None
    return (rest_json.ROW if key == "instances" else rest_json.COLUMNAR), {name: array}


__all__ = ["MIN_FAST_BYTES", "parse", "parse_c", "parse_ints", "request_tensors", "split"]
