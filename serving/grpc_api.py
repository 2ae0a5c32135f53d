"""TF Serving's gRPC services (PredictionService, ModelService) over the registry, with TF Serving's statuses."""

from __future__ import annotations

import functools
import logging
from concurrent import futures

import grpc

from odal.serving import predict, tensors
from odal.serving._protos import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                  model_service_pb2_grpc, prediction_service_pb2_grpc, predict_pb2)
from odal.serving.errors import ServingError, capped, code_value, invalid_argument
from odal.serving.limits import DEFAULT, Limits
from odal.serving.registry import Registry

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
RELOAD_WAIT_SECONDS = 300.0
_MAX_ERROR_CHARS = DEFAULT.rest_max_error_chars


def _target(spec) -> predict.Target:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return predict.Target(spec.name, version=spec.version.value)
    if choice == "version_label":
        return predict.Target(spec.name, label=spec.version_label)
    return predict.Target(spec.name)


def _statused(method):
    """Turn a ServingError (or an unexpected exception) into the gRPC status TF Serving would send."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as exc:
            context.abort(grpc.StatusCode[exc.code], capped(exc.message, _MAX_ERROR_CHARS))
        except Exception as exc:  # noqa: BLE001 - never leak a traceback as the status
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, capped(f"{type(exc).__name__}: {exc}", _MAX_ERROR_CHARS))

    return wrapper


def metadata_response(registry: Registry, target: predict.Target, fields) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata (shared with REST): the signature defs of the version the spec resolves to."""
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    version, servable = registry.servable(target.name, target.version, target.label)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = target.name
    response.model_spec.version.value = version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in servable.signature_defs.items():
        signatures.signature_def[name].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


def status_response(registry: Registry, target: predict.Target) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus (shared with REST)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for entry in registry.status(target.name, target.version, target.label):
        item = response.model_version_status.add()
        item.version = entry.version
        item.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry.state)
        item.status.error_code = code_value(entry.error_code)
        item.status.error_message = entry.error_message
    return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: Registry, limits: Limits = DEFAULT):
        self._registry = registry
        self._limits = limits

    @_statused
    def Predict(self, request, context):
        inputs = {alias: tensors.from_proto(proto, self._limits.max_tensor_bytes, self._limits.max_fill_bytes)
                  for alias, proto in request.inputs.items()}
        result = predict.run(self._registry, _target(request.model_spec), request.model_spec.signature_name,
                             inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = result.signature_name
        for alias, array in result.outputs.items():
            tensors.to_proto(array, out=response.outputs[alias])
        return response

    @_statused
    def GetModelMetadata(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return metadata_response(self._registry, _target(request.model_spec), list(request.metadata_field))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry):
        self._registry = registry

    @_statused
    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return status_response(self._registry, _target(request.model_spec))

    @_statused
    def HandleReloadConfigRequest(self, request, context):
        # TF Serving answers a failed reload with the gRPC status (the response's status field is not seen).
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                   "ModelConfigList is currently supported")
        remaining = context.time_remaining()
        wait = RELOAD_WAIT_SECONDS if remaining is None else max(min(remaining - 0.5, RELOAD_WAIT_SECONDS), 0.1)
        self._registry.reload(request.config, wait_seconds=wait)
        return model_management_pb2.ReloadConfigResponse()


def make_server(registry: Registry, address: str, max_workers: int = 16,
                limits: Limits = DEFAULT) -> tuple[grpc.Server, int]:
    """A gRPC server for both services bound to ``address``; returns it (not started) and the bound port.
    Messages are bounded by ``limits.grpc_max_message_bytes`` (TF Serving lifts gRPC's 4 MB default to 2 GB; a
    detector's image needs a few MB) and RPCs in flight by ``limits.grpc_max_concurrent_rpcs``."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="odal-grpc"),
        options=[("grpc.max_send_message_length", limits.grpc_max_message_bytes),
                 ("grpc.max_receive_message_length", limits.grpc_max_message_bytes),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=limits.grpc_max_concurrent_rpcs,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(registry, limits), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise ServingError("UNAVAILABLE", f"could not bind the gRPC server to {address}")
    return server, port


__all__ = ["make_server", "metadata_response", "status_response"]
