"""TF Serving's JSON tensor encoding for REST predict: request rows/columns in, ``predictions``/``outputs`` out.

Row format (``"instances"``): a list, one element per batch item; with several named inputs each element is an
object keyed by input name.  Columnar format (``"inputs"``): the whole tensor, or an object of named tensors.
Binary values are ``{"b64": "..."}``; outputs whose alias ends in ``_bytes`` are written that way.  Floats are
written as TF Serving writes them (shortest of 6 or 9/17 significant digits that round-trips, always with a
``.0`` or an exponent, ``NaN``/``Infinity`` allowed).  Messages follow TF Serving's ``json_tensor.cc``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import numpy as np
import orjson

from odal.serving import json_floats, tensors
from odal.serving._protos import types_pb2
from odal.serving.errors import ServingError, invalid_argument
from odal.serving.preview import preview as _text

ROW, COLUMNAR = "row", "columnar"
_FLOAT32_MAX_INT, _FLOAT64_MAX_INT = (1 << 24) - 1, (1 << 53) - 1
_INT32 = (-(2**31), 2**31 - 1)
_INT_RANGES = {types_pb2.DT_INT64: (-(2**63), 2**63 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
               types_pb2.DT_UINT64: (0, 2**64 - 1)}


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def parse_body(body: bytes) -> dict:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = _parse_slowly(body)  # what orjson refuses (NaN, huge integers, lone surrogates...): json's rules
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_text(doc)} Is not object")
    return doc


def _parse_slowly(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise invalid_argument(f"JSON Parse error: {getattr(exc, 'msg', exc)} at offset: "
                               f"{getattr(exc, 'pos', 0)}") from None


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {_text(doc)} not formatted correctly. 'signature_name' key must be a "
                               f"string value.")
    return name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        try:  # TF Serving accepts the web-safe alphabet too
            return base64.urlsafe_b64decode(value["b64"])
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {_text(value)} Type: {_json_type(value)} is not of expected type: "
                            f"{tensors.dtype_name(dtype)}")


def _leaf(value: Any, dtype: int) -> Any:
    """One JSON scalar as a value of ``dtype``, with TF Serving's type rules."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            if not _is_b64(value):
                raise invalid_argument(f"JSON Value: {_text(value)} not formatted correctly for base64 data")
            return _b64decode(value)
        raise _type_error(value, dtype)
    is_bool = isinstance(value, bool)
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid_argument(f"JSON Value: {_text(value)} is not valid UTF-8 (a lone surrogate)") from None
    if dtype == types_pb2.DT_BOOL:
        if not is_bool:
            raise _type_error(value, dtype)
        return value
    if is_bool or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if isinstance(value, int):
            limit = _FLOAT32_MAX_INT if dtype == types_pb2.DT_FLOAT else _FLOAT64_MAX_INT
            if abs(value) > limit:
                raise _lossy(value, dtype)
        else:
            _check_lossless(np.array([value]), dtype, value)
        return value
    if not isinstance(value, int):
        raise _type_error(value, dtype)
    low, high = _INT_RANGES.get(dtype, _INT32)
    if not low <= value <= high:
        raise _type_error(value, dtype)
    return value


def _lossy(value: Any, dtype: int) -> ServingError:
    target = "float" if dtype == types_pb2.DT_FLOAT else "double"
    return invalid_argument(f"Cannot convert JSON value: {_text(value)} to {target} without loss of precision.")


def _check_lossless(array: np.ndarray, dtype: int, sample: Any = None) -> None:
    if array.size == 0:
        return
    if array.dtype.kind in "iu":
        limit = _FLOAT32_MAX_INT if dtype == types_pb2.DT_FLOAT else _FLOAT64_MAX_INT
        bad = np.abs(array.astype(object)) > limit if array.dtype.kind == "u" else np.abs(array) > limit
    elif dtype == types_pb2.DT_FLOAT:
        finite = np.isfinite(array)
        bad = finite & (np.abs(np.where(finite, array, 0)) > np.finfo(np.float32).max)
    else:
        return
    if np.any(bad):
        value = sample if sample is not None else array.reshape(-1)[np.argmax(np.asarray(bad).reshape(-1))].item()
        raise _lossy(value, dtype)


def _walk(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    """Check one (nested) JSON value against its dense shape and collect its leaves (TF Serving's FillTensorProto)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {_text(value)} found at incorrect level: {level + 1} in the JSON "
                                   f"DOM. Expected at level: {rank}")
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                               f"{shape[level]}")
    for item in value:
        _walk(item, level + 1, shape, dtype, out)


def tensor_from_json(value: Any, dtype: int) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of ``dtype``."""
    shape = _dense_shape(value)
    if len(shape) > tensors.MAX_RANK:
        raise invalid_argument(f"JSON Value: {_text(value)} is nested {len(shape)} lists deep, more than "
                               f"{tensors.MAX_RANK}")
    target = tensors.numpy_dtype(dtype)
    if dtype not in (types_pb2.DT_STRING, types_pb2.DT_BOOL) and dtype in _NUMERIC:
        try:
            array = np.array(value)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and list(array.shape) == shape and array.dtype.kind in "iuf":
            low, high = _INT_RANGES.get(dtype, _INT32)
            if array.dtype.kind == "f" and dtype not in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF):
                pass  # a decimal where an integer is expected: the slow path names the value
            elif array.dtype.kind in "iu" and dtype not in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE) and \
                    array.size and (array.min() < low or array.max() > high):
                pass  # out of the type's range: the slow path names the value
            else:
                if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
                    _check_lossless(array, dtype)
                return array.astype(target)
    if dtype not in _NUMERIC and dtype not in (types_pb2.DT_STRING, types_pb2.DT_BOOL):
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {_text(value)} to type: "
                                            f"{tensors.dtype_name(dtype)}")
    leaves: list = []
    _walk(value, 0, shape, dtype, leaves)
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    return np.array(leaves, dtype=target).reshape(shape)


_SMALL_INTS = {types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8}
_NUMERIC = _SMALL_INTS | {types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT64, types_pb2.DT_UINT32,
                          types_pb2.DT_UINT64}


def _status_text(exc: ServingError) -> str:
    return f"{exc.code}: {exc.message}"


def _rows(instances: list, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    if not isinstance(instances[0], dict) and len(input_dtypes) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    objects = is_object(instances[0])
    names = sorted(input_dtypes)
    columns: dict[str, list[np.ndarray]] = {}
    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    if name not in input_dtypes:
                        raise invalid_argument(f"JSON object: does not have named input: {name}")
                    _add_item(columns, name, tensor_from_json(value, input_dtypes[name]))
                except ServingError as exc:
                    raise invalid_argument(f"Failed to process element: {index} key: {name} of 'instances' list. "
                                           f"Error: {_status_text(exc)}") from None
            if set(element) != set(names):
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{_text(element)} keys must be equal to: {','.join(names)}")
        else:
            if is_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            name = names[0]
            try:
                _add_item(columns, name, tensor_from_json(element, input_dtypes[name]))
            except ServingError as exc:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. Error: "
                                       f"{_status_text(exc)}") from None
    return {name: np.stack(items) for name, items in columns.items()}


def _add_item(columns: dict[str, list[np.ndarray]], name: str, item: np.ndarray) -> None:
    items = columns.setdefault(name, [])
    if items and items[0].size != item.size:
        raise invalid_argument(f"Expecting tensor size: {items[0].size} but got: {item.size}")
    if items and items[0].shape != item.shape:
        raise invalid_argument(f"Expecting shape [{','.join(map(str, items[0].shape))}] but got: "
                               f"[{','.join(map(str, item.shape))}]")
    items.append(item)


def _columns(inputs: Any, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(input_dtypes) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        name = next(iter(input_dtypes))
        return {name: tensor_from_json(inputs, input_dtypes[name])}
    result = {}
    for name in sorted(input_dtypes):
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        result[name] = tensor_from_json(inputs[name], input_dtypes[name])
    return result


def request_tensors(doc: dict, input_dtypes: Mapping[str, int], signature: str) -> tuple[str, dict[str, np.ndarray]]:
    """(format, inputs) from a parsed predict body, given the signature's input aliases and DataTypes."""
    if not input_dtypes:
        raise invalid_argument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(f"JSON Value: {_text(doc)} Not formatted correctly expecting only one of 'inputs' or "
                               f"'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {_text(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_text(doc)} No values in 'instances' array")
        return ROW, _rows(instances, input_dtypes)
    if has_inputs:
        return COLUMNAR, _columns(doc["inputs"], input_dtypes)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---- output ------------------------------------------------------------------------------------------------

def _leaves(array: np.ndarray, as_bytes: bool) -> list[str]:
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f":
        return json_floats.texts(flat)
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind in "OSU":
        if as_bytes:
            return ['{"b64": "' + base64.b64encode(_as_bytes(v)).decode("ascii") + '"}' for v in flat.tolist()]
        return [json.dumps(_as_bytes(v).decode("utf-8", "replace")) for v in flat.tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def render(array: np.ndarray, as_bytes: bool = False) -> str:
    """One tensor as nested JSON lists (a scalar as a bare value)."""
    leaves = _leaves(array, as_bytes)
    if array.ndim == 0:
        return leaves[0]
    for axis in range(array.ndim - 1, -1, -1):
        size = array.shape[axis]
        if size == 0:
            leaves = ["[]"] * int(np.prod(array.shape[:axis], dtype=np.int64))
        else:
            leaves = ["[" + ",".join(leaves[i:i + size]) + "]" for i in range(0, len(leaves), size)]
    return leaves[0]


def _is_bytes_output(name: str, array: np.ndarray) -> bool:
    return array.dtype.kind in "OSU" and name.endswith("_bytes")


def response_json(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
    """The body of a predict answer: ``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            return '{"outputs": ' + render(outputs[names[0]], _is_bytes_output(names[0], outputs[names[0]])) + "}"
        parts = [json.dumps(n) + ": " + render(outputs[n], _is_bytes_output(n, outputs[n])) for n in names]
        return '{"outputs": {' + ", ".join(parts) + "}}"
    batch = None
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: "
                                   f"{batch}")
        batch = array.shape[0]
    def item_of(name: str, item: int) -> str:
        array = outputs[name]
        return render(array[item:item + 1].reshape(array.shape[1:]), _is_bytes_output(name, array))

    rows = []
    for item in range(batch or 0):
        if len(names) == 1:
            rows.append(item_of(names[0], item))
        else:
            rows.append("{" + ", ".join(json.dumps(n) + ": " + item_of(n, item) for n in names) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"
