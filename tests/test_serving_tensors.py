"""numpy <-> TensorProto without TensorFlow (serving/tensors.py), and TF Serving's REST JSON codec (rest_json.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from odal.serving import rest_json, tensors
from odal.serving._protos import tensor_pb2, types_pb2
from odal.serving.errors import ServingError


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3), np.float32(2.5), np.array([1.5, -2.0], dtype=np.float64),
    np.array([[True, False]]), np.array([1, -2], dtype=np.int64), np.array([b"a\x00", b""], dtype=object),
])
def test_arrays_round_trip_through_tensor_protos(array):
    back = tensors.from_proto(tensors.to_proto(array))
    assert back.shape == np.shape(array) and back.dtype == np.asarray(array).dtype
    assert np.array_equal(back, array)


def test_typed_fields_as_tf_serving_writes_them_are_read_and_a_single_value_fills_the_shape():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add().size = 3
    proto.float_val.extend([1.0, 2.0, 3.0])
    assert tensors.from_proto(proto).tolist() == [1.0, 2.0, 3.0]
    del proto.float_val[1:]
    assert tensors.from_proto(proto).tolist() == [1.0, 1.0, 1.0]


def test_client_import_is_fast_and_does_not_start_tensorflow():
    code = ("import time; t = time.perf_counter(); import odal.serving.client, sys; "
            "print('tensorflow.python' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded, seconds = out.stdout.split()
    assert loaded == "False"
    assert float(seconds) < 5.0  # ~0.5 s here (numpy + grpc); TensorFlow alone would take several seconds


def test_row_format_batches_instances_and_columnar_takes_whole_tensors():
    fmt, inputs = rest_json.request_tensors({"instances": [[1, 2], [3, 4]]}, {"x": types_pb2.DT_INT32}, "")
    assert fmt == rest_json.ROW and inputs["x"].tolist() == [[1, 2], [3, 4]] and inputs["x"].dtype == np.int32
    fmt, inputs = rest_json.request_tensors(
        {"inputs": {"a": [1.5], "b": {"b64": "aGk="}}}, {"a": types_pb2.DT_FLOAT, "b": types_pb2.DT_STRING}, "")
    assert fmt == rest_json.COLUMNAR and inputs["a"].dtype == np.float32 and inputs["b"].item() == b"hi"


@pytest.mark.parametrize("doc, message", [
    ({"instances": [[1, 2], [3]]}, "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                                   "Expecting tensor size: 2 but got: 1"),
    ({"instances": [1.5]}, "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
                           "JSON Value: 1.5 Type: Number is not of expected type: int32"),
    ({"inputs": [[1], [2, 3]]}, "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
    ({"signature_name": "x"}, "Missing 'inputs' or 'instances' key"),
])
def test_malformed_predict_bodies_get_tf_servings_messages(doc, message):
    with pytest.raises(ServingError) as raised:
        rest_json.request_tensors(doc, {"x": types_pb2.DT_INT32}, "")
    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.message == message


def test_floats_are_written_as_tf_serving_writes_them():
    values = np.array([0.2, 1.0, 1e6, 0.1234567, np.nan, -np.inf], dtype=np.float32)
    assert rest_json.render(values) == "[0.2,1.0,1e+06,0.123456702,NaN,-Infinity]"


def test_row_outputs_split_the_batch_and_bytes_outputs_are_base64():
    text = rest_json.response_json({"score": np.array([[0.5], [1.0]], dtype=np.float32),
                                    "id_bytes": np.array([b"\x00", b"z"], dtype=object)}, rest_json.ROW)
    assert json.loads(text) == {"predictions": [{"id_bytes": {"b64": "AA=="}, "score": [0.5]},
                                                {"id_bytes": {"b64": "eg=="}, "score": [1.0]}]}
    single = rest_json.response_json({"y": np.array([1.0], dtype=np.float32)}, rest_json.COLUMNAR)
    assert json.loads(single) == {"outputs": [1.0]}
