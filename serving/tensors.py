"""numpy arrays <-> ``tensorflow.TensorProto``, without TensorFlow.

Numeric tensors travel as ``tensor_content`` (raw little-endian bytes, what ``tf.make_tensor_proto`` writes);
string tensors as ``string_val``.  Reading accepts both that and the typed repeated fields (``float_val`` ...),
which is what TF Serving itself writes in a ``PredictResponse``, including TF's rule that a single value fills
the whole shape.
"""

from __future__ import annotations

import numpy as np

from odal.serving._protos import tensor_pb2, types_pb2
from odal.serving.errors import invalid_argument
from odal.serving.limits import DEFAULT as _LIMITS

# DataType -> (numpy dtype, typed field of TensorProto)
_BY_ENUM: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_HALF: (np.dtype("<f2"), "half_val"),
    types_pb2.DT_INT8: (np.dtype("i1"), "int_val"),
    types_pb2.DT_INT16: (np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val"),
    types_pb2.DT_UINT16: (np.dtype("<u2"), "int_val"),
    types_pb2.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype("?"), "bool_val"),
    types_pb2.DT_COMPLEX64: (np.dtype("<c8"), "scomplex_val"),
    types_pb2.DT_COMPLEX128: (np.dtype("<c16"), "dcomplex_val"),
}
_BY_KIND = {(dtype.kind, dtype.itemsize): enum for enum, (dtype, _field) in _BY_ENUM.items()}


def dtype_name(enum: int) -> str:
    """TF's short name of a DataType (``DT_UINT8`` -> ``uint8``), as used in TF and TF Serving messages."""
    name = types_pb2.DataType.Name(enum)
    return {"DT_FLOAT": "float", "DT_HALF": "half"}.get(name, name[3:].lower())


def numpy_dtype(enum: int) -> np.dtype:
    """The numpy dtype for a DataType; ``object`` (bytes values) for DT_STRING."""
    if enum == types_pb2.DT_STRING:
        return np.dtype(object)
    try:
        return _BY_ENUM[enum][0]
    except KeyError:
        try:
            name = types_pb2.DataType.Name(enum)
        except ValueError:
            name = f"DataType {enum}"
        raise invalid_argument(f"unsupported tensor type: {name}") from None


def data_type(array: np.ndarray) -> int:
    """The DataType of a numpy array (bytes, str and object arrays are DT_STRING)."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _BY_KIND[(array.dtype.kind, array.dtype.itemsize)]
    except KeyError:
        raise invalid_argument(f"unsupported numpy dtype: {array.dtype}") from None


def to_proto(value, dtype: int | None = None, out: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """A TensorProto holding ``value`` (an array, a list, bytes or a scalar); ``dtype`` forces a DataType."""
    proto = tensor_pb2.TensorProto() if out is None else out
    if isinstance(value, (bytes, str)):
        value = np.array([value], dtype=object).reshape(())
    array = np.asarray(value)
    if dtype is None:
        dtype = data_type(array)
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1))
    else:
        target = numpy_dtype(dtype)
        proto.tensor_content = np.ascontiguousarray(array, dtype=target).tobytes()
    return proto


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument("tensor has unknown rank")
    return tuple(dim.size for dim in proto.tensor_shape.dim)


MAX_RANK = 32  # numpy's own limit is 64; no image model takes more than a handful
_STRING_ITEM_BYTES = 8  # an object array holds one pointer per value


def _data_bytes(proto: tensor_pb2.TensorProto, itemsize: int) -> int:
    """How many bytes of values the message itself carries (what a fill would expand from)."""
    if proto.dtype == types_pb2.DT_STRING:
        return len(proto.string_val) * _STRING_ITEM_BYTES
    if proto.tensor_content:
        return len(proto.tensor_content)
    field = _BY_ENUM[proto.dtype][1]
    per_value = 2 if field in ("scomplex_val", "dcomplex_val") else 1
    return len(getattr(proto, field)) // per_value * itemsize


def checked_shape(proto: tensor_pb2.TensorProto, max_bytes: int = _LIMITS.max_tensor_bytes,
                  max_fill_bytes: int = _LIMITS.max_fill_bytes) -> tuple[tuple[int, ...], int, np.dtype]:
    """(shape, element count, numpy dtype) of a TensorProto, checked before anything is allocated: no negative
    size, at most ``max_bytes`` declared, and no more than ``max_fill_bytes`` made up by TF's fill rule beyond
    the values the message carries.  Sizes are multiplied as Python integers (no int64 wrap-around)."""
    shape = shape_of(proto)
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"tensor has {len(shape)} dimensions, more than {MAX_RANK}")
    if any(size < 0 for size in shape):
        raise invalid_argument(f"tensor shape has a negative size: {list(shape)}")
    dtype = numpy_dtype(proto.dtype)
    itemsize = _STRING_ITEM_BYTES if proto.dtype == types_pb2.DT_STRING else dtype.itemsize
    count, extent = 1, 1
    for size in shape:
        count *= size
        extent *= max(size, 1)  # numpy refuses even an empty array whose other sizes overflow
    declared = count * itemsize
    if max(declared, extent * itemsize) > max_bytes:
        raise invalid_argument(f"tensor {dtype_name(proto.dtype)} {list(shape)} declares {declared} bytes, more "
                               f"than the server accepts ({max_bytes})")
    carried = _data_bytes(proto, itemsize)
    if declared > carried and declared - carried > max_fill_bytes:
        raise invalid_argument(f"tensor {dtype_name(proto.dtype)} {list(shape)} declares {declared} bytes but "
                               f"carries {carried}")
    return shape, count, dtype


def from_proto(proto: tensor_pb2.TensorProto, max_bytes: int = _LIMITS.max_tensor_bytes,
               max_fill_bytes: int = _LIMITS.max_fill_bytes) -> np.ndarray:
    """The numpy array a TensorProto holds (DT_STRING gives an object array of bytes); see ``checked_shape``."""
    shape, count, dtype = checked_shape(proto, max_bytes, max_fill_bytes)
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        return _fill(np.array(values, dtype=object) if values else np.empty(0, dtype=object), count, shape, proto)
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise invalid_argument(
                f"tensor_content has {len(proto.tensor_content)} bytes, expected {count * dtype.itemsize} for "
                f"{dtype_name(proto.dtype)} {list(shape)}")
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    field = _BY_ENUM[proto.dtype][1]
    raw = getattr(proto, field)
    try:
        if field == "half_val":
            flat = np.array(raw, dtype=np.int64).astype("<u2").view("<f2") if len(raw) else np.empty(0, "<f2")
        elif field in ("scomplex_val", "dcomplex_val"):
            if len(raw) % 2:
                raise invalid_argument(f"{field} has an odd number of values ({len(raw)}): real/imaginary pairs")
            pairs = np.array(raw, dtype=dtype.type(0).real.dtype)
            flat = (pairs[0::2] + 1j * pairs[1::2]).astype(dtype)
        elif len(raw):
            wide = np.array(raw)
            if wide.dtype.kind in "iu" and dtype.kind in "iu":
                info = np.iinfo(dtype)
                if wide.min() < info.min or wide.max() > info.max:
                    raise invalid_argument(f"{field} holds a value outside {dtype_name(proto.dtype)}'s range")
            flat = wide.astype(dtype, copy=False)
        else:
            flat = np.empty(0, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise invalid_argument(f"{field}: {type(exc).__name__}: {exc}") from None
    return _fill(flat, count, shape, proto)


def _fill(flat: np.ndarray, count: int, shape: tuple[int, ...], proto) -> np.ndarray:
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size == 0:
        return np.zeros(shape, dtype=flat.dtype) if flat.dtype != object else np.full(shape, b"", dtype=object)
    if flat.size < count:
        # TF's rule: the last value given fills the rest (a single value is a constant fill).
        padded = np.empty(count, dtype=flat.dtype)
        padded[: flat.size] = flat
        padded[flat.size:] = flat[-1]
        return padded.reshape(shape)
    raise invalid_argument(f"tensor has {flat.size} values, more than its shape {list(shape)} holds")
