"""TF Serving's API protos and gRPC stubs, imported without starting TensorFlow.

The ``tensorflow_serving.apis`` modules import ``tensorflow.core.framework.*_pb2``.  Importing any submodule of
``tensorflow`` first runs ``tensorflow/__init__.py``, which loads the whole TensorFlow runtime (seconds, and a
process the daemon promises never to start).  The protos themselves are plain generated modules under
``tensorflow/core/`` whose packages' ``__init__.py`` are empty.  So, when TensorFlow is not already imported, a
bare placeholder ``tensorflow`` package (with the real package's search path) stands in while the proto modules
load, and is removed right after.  A later ``import tensorflow`` then runs the real ``__init__`` and reuses the
proto modules already in ``sys.modules`` (same descriptors, no double registration).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_MODULES = (
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.config.model_server_config_pb2",
    "tensorflow_serving.config.file_system_storage_path_source_pb2",
    "tensorflow_serving.apis.model_pb2",
    "tensorflow_serving.apis.status_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
)


def _import_all() -> dict[str, types.ModuleType]:
    if "tensorflow" in sys.modules:
        return {name: importlib.import_module(name) for name in _MODULES}
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the tensorflow protos (tensorflow-serving-api's dependency) are not installed")
    placeholder = types.ModuleType("tensorflow")
    placeholder.__path__ = list(spec.submodule_search_locations)
    placeholder.__spec__ = spec
    sys.modules["tensorflow"] = placeholder
    try:
        return {name: importlib.import_module(name) for name in _MODULES}
    finally:
        if sys.modules.get("tensorflow") is placeholder:
            del sys.modules["tensorflow"]


_loaded = _import_all()
predict_pb2 = _loaded["tensorflow_serving.apis.predict_pb2"]
get_model_metadata_pb2 = _loaded["tensorflow_serving.apis.get_model_metadata_pb2"]
get_model_status_pb2 = _loaded["tensorflow_serving.apis.get_model_status_pb2"]
model_management_pb2 = _loaded["tensorflow_serving.apis.model_management_pb2"]
model_service_pb2_grpc = _loaded["tensorflow_serving.apis.model_service_pb2_grpc"]
prediction_service_pb2_grpc = _loaded["tensorflow_serving.apis.prediction_service_pb2_grpc"]
model_server_config_pb2 = _loaded["tensorflow_serving.config.model_server_config_pb2"]
file_system_storage_path_source_pb2 = _loaded["tensorflow_serving.config.file_system_storage_path_source_pb2"]
model_pb2 = _loaded["tensorflow_serving.apis.model_pb2"]
status_pb2 = _loaded["tensorflow_serving.apis.status_pb2"]
tensor_pb2 = _loaded["tensorflow.core.framework.tensor_pb2"]
tensor_shape_pb2 = _loaded["tensorflow.core.framework.tensor_shape_pb2"]
types_pb2 = _loaded["tensorflow.core.framework.types_pb2"]
meta_graph_pb2 = _loaded["tensorflow.core.protobuf.meta_graph_pb2"]
saved_model_pb2 = _loaded["tensorflow.core.protobuf.saved_model_pb2"]
del _loaded

__all__ = [
    "predict_pb2", "get_model_metadata_pb2", "get_model_status_pb2", "model_management_pb2",
    "model_service_pb2_grpc", "prediction_service_pb2_grpc", "model_server_config_pb2", "tensor_pb2",
    "tensor_shape_pb2", "types_pb2", "meta_graph_pb2", "saved_model_pb2", "model_pb2", "status_pb2",
    "file_system_storage_path_source_pb2",
]
