"""Client of a TF Serving-compatible model server (``odal serve`` or ``tensorflow_model_server``), over gRPC.

Used by the daemon and the Prodigy recipe; it never imports TensorFlow (tensors are built with numpy).  One
long-lived channel per client; every call has a deadline; UNAVAILABLE (server restarting, not up yet) is retried
with exponential backoff and jitter within that deadline; message size limits are lifted for large images.

    with ServingClient("127.0.0.1:8500") as client:
        client.wait_until_available("detector", timeout=120)
        found = client.predict("detector", image)            # image: HxWx3 uint8 array, encoded bytes, or a path
        found.boxes, found.classes, found.scores, found.model_version

The OD API's ``image_tensor`` export takes one image per request (input shape [1, H, W, 3] uint8), so
``predict_many`` keeps up to ``concurrency`` requests in flight on the one channel rather than batching.  A model
whose signature takes a string input (``encoded_image_string_tensor``) is sent encoded bytes instead.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import grpc
import numpy as np

from odal.serving import tensors
from odal.serving._protos import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                  model_server_config_pb2, model_service_pb2_grpc, predict_pb2,
                                  prediction_service_pb2_grpc, types_pb2)
from odal.serving.errors import ServingError, code_name
from odal.serving.registry import VersionStatus

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
DETECTION_OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
EMBEDDING_OUTPUT = "image_embedding"  # odal's exports add it (daemon/worker/embedding.py); other models may not
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first, trimmed to ``num``.

    ``boxes`` are normalised ``[ymin, xmin, ymax, xmax]`` (float32, shape [num, 4]); ``classes`` are the label
    map's ids (int32, 1-based); ``model_version`` is the version that answered; ``embedding`` the image's
    feature vector (float32 [D]) when the model's signature has an ``image_embedding`` output, else None.
    """

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    num: int
    model_version: int
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Signature:
    """A signature's inputs and outputs: alias -> (DataType enum, shape with -1 for unknown sizes)."""

    name: str
    inputs: Mapping[str, tuple[int, tuple[int, ...]]]
    outputs: Mapping[str, tuple[int, tuple[int, ...]]]
    model_version: int


def _error(exc: grpc.RpcError) -> ServingError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    name = code.name if code is not None and code.name != "OK" else "UNKNOWN"
    return ServingError(name, exc.details() if hasattr(exc, "details") and exc.details() else str(code))


class ServingClient:
    """A long-lived gRPC connection to a model server; thread-safe; close it (or use ``with``) when done."""

    def __init__(self, address: str = "127.0.0.1:8500", *, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.2, max_backoff: float = 5.0):
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._signatures: dict[tuple[str, str], Signature] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- calls -------------------------------------------------------------------------------------------

    def _call(self, method, request, timeout: float | None):
        """One unary call with a deadline; UNAVAILABLE is retried with backoff while time and retries remain."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        delay = self.backoff
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as exc:
                error = _error(exc)
            pause = delay * (0.5 + random.random())
            if error.code != "UNAVAILABLE" or attempt >= self.retries or deadline - time.monotonic() <= pause:
                raise error
            log.debug("model server %s unavailable (%s); retry in %.2fs", self.address, error.message, pause)
            time.sleep(pause)
            delay = min(delay * 2, self.max_backoff)
            attempt += 1

    @staticmethod
    def _spec(spec, model: str, version: int | None, label: str | None, signature: str | None = None) -> None:
        spec.name = model
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if version is not None:
            spec.version.value = version
        elif label is not None:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def predict_tensors(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
                        label: str | None = None, signature: str = DEFAULT_SIGNATURE,
                        output_filter: Sequence[str] = (), timeout: float | None = None,
                        ) -> tuple[dict[str, np.ndarray], int]:
        """Predict with any signature: inputs alias -> array; returns (outputs alias -> array, model version)."""
        request = self._request(model, inputs, version, label, signature, output_filter)
        response = self._call(self._predict.Predict, request, timeout)
        return self._outputs(response)

    def _request(self, model, inputs, version, label, signature, output_filter) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature)
        for alias, value in inputs.items():
            tensors.to_proto(value, out=request.inputs[alias])
        request.output_filter.extend(output_filter)
        return request

    @staticmethod
    def _outputs(response) -> tuple[dict[str, np.ndarray], int]:
        outputs = {alias: tensors.from_proto(proto) for alias, proto in response.outputs.items()}
        return outputs, response.model_spec.version.value

    # ---- detection ---------------------------------------------------------------------------------------

    def predict(self, model: str, image, *, version: int | None = None, label: str | None = None,
                signature: str = DEFAULT_SIGNATURE, timeout: float | None = None) -> Detections:
        """Detect objects in one image (HxWx3 uint8 array, encoded JPEG/PNG bytes, or a file path)."""
        request = self._image_request(model, image, version, label, signature, timeout)
        try:
            response = self._call(self._predict.Predict, request, timeout)
        except ServingError as exc:
            if exc.code != "INVALID_ARGUMENT" or not self._forget(model, signature):
                raise
            # The signature may have changed with a new version: look it up again, once.
            request = self._image_request(model, image, version, label, signature, timeout)
            response = self._call(self._predict.Predict, request, timeout)
        return _detections(*self._outputs(response))

    def predict_many(self, model: str, images: Iterable, *, version: int | None = None, label: str | None = None,
                     signature: str = DEFAULT_SIGNATURE, concurrency: int = 4,
                     timeout: float | None = None) -> list[Detections]:
        """Detections for many images, in order, with up to ``concurrency`` requests in flight at once."""
        results: list[Detections | None] = []
        in_flight: collections.deque = collections.deque()

        def finish() -> None:
            index, request, future = in_flight.popleft()
            try:
                response = future.result()
            except grpc.RpcError as exc:
                error = _error(exc)
                if error.code != "UNAVAILABLE":
                    raise error from None
                response = self._call(self._predict.Predict, request, timeout)
            results[index] = _detections(*self._outputs(response))

        try:
            for index, image in enumerate(images):
                results.append(None)
                request = self._image_request(model, image, version, label, signature, timeout)
                future = self._predict.Predict.future(request, timeout=self.timeout if timeout is None else timeout)
                in_flight.append((index, request, future))
                if len(in_flight) >= max(concurrency, 1):
                    finish()
            while in_flight:
                finish()
        finally:
            for _index, _request, future in in_flight:
                future.cancel()
        return results  # type: ignore[return-value]

    def _image_request(self, model, image, version, label, signature, timeout) -> predict_pb2.PredictRequest:
        info = self.signature(model, version=version, label=label, signature=signature, timeout=timeout)
        if len(info.inputs) != 1:
            raise ServingError("INVALID_ARGUMENT", f"signature {signature!r} of {model} takes {len(info.inputs)} "
                                                   f"inputs; an image model takes one")
        alias, (dtype, _shape) = next(iter(info.inputs.items()))
        if dtype == types_pb2.DT_STRING:
            value = np.array([_encoded(image)], dtype=object)
        elif dtype == types_pb2.DT_UINT8:
            value = _pixels(image)[np.newaxis]
        else:
            raise ServingError("INVALID_ARGUMENT", f"input {alias!r} of {model} is {tensors.dtype_name(dtype)}; "
                                                   f"expected uint8 pixels or encoded image bytes")
        present = [name for name in DETECTION_OUTPUTS if name in info.outputs]
        wanted = present + [EMBEDDING_OUTPUT] * (EMBEDDING_OUTPUT in info.outputs)
        return self._request(model, {alias: value}, version, label, signature,
                             wanted if len(present) == len(DETECTION_OUTPUTS) else ())

    # ---- metadata and status -----------------------------------------------------------------------------

    def signature(self, model: str, *, version: int | None = None, label: str | None = None,
                  signature: str = DEFAULT_SIGNATURE, timeout: float | None = None) -> Signature:
        """A signature's inputs and outputs (GetModelMetadata); cached per model and signature name."""
        key = (model, signature)
        with self._lock:
            cached = self._signatures.get(key)
        if cached is not None:
            return cached
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self._call(self._predict.GetModelMetadata, request, timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if signature not in signatures.signature_def:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.')
        found = signatures.signature_def[signature]

        def infos(items) -> dict[str, tuple[int, tuple[int, ...]]]:
            return {alias: (info.dtype, tuple(d.size for d in info.tensor_shape.dim)) for alias, info in items}

        result = Signature(signature, infos(found.inputs.items()), infos(found.outputs.items()),
                           response.model_spec.version.value)
        with self._lock:
            self._signatures[key] = result
        return result

    def _forget(self, model: str, signature: str) -> bool:
        with self._lock:
            return self._signatures.pop((model, signature), None) is not None

    def model_status(self, model: str, version: int | None = None, *, timeout: float | None = None,
                     ) -> list[VersionStatus]:
        """Every version the server knows of ``model`` (newest first, as the server lists them), or one."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, None)
        response = self._call(self._models.GetModelStatus, request, timeout)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(item.version, state_name(item.state), code_name(item.status.error_code),
                              item.status.error_message) for item in response.model_version_status]

    def wait_until_available(self, model: str, version: int | None = None, timeout: float = 60.0,
                             poll: float = 0.2) -> int:
        """Block until ``version`` (or any version) of ``model`` is AVAILABLE; returns the newest available.

        Raises ServingError: the version's own error if it ended (END) without loading, DEADLINE_EXCEEDED when
        ``timeout`` passes first.  NOT_FOUND and UNAVAILABLE are waited through (not loaded yet / not up yet).
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            try:
                statuses = self.model_status(model, timeout=max(min(remaining, 5.0), 0.05))
                available = [s.version for s in statuses if s.state == "AVAILABLE"]
                if version is None and available:
                    return max(available)
                if version is not None:
                    mine = [s for s in statuses if s.version == version]
                    if version in available:
                        return version
                    if mine and mine[0].state == "END" and mine[0].error_code != "OK":
                        raise ServingError(mine[0].error_code, mine[0].error_message)
                last = ", ".join(f"{s.version}:{s.state}" for s in statuses)
            except ServingError as exc:
                if exc.code not in ("NOT_FOUND", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise
                last = exc.message
            if time.monotonic() + poll > deadline:
                wanted = f"version {version}" if version is not None else "a version"
                raise ServingError("DEADLINE_EXCEEDED", f"{wanted} of {model} not available after {timeout:g}s "
                                                        f"({last})")
            time.sleep(poll)

    def reload_config(self, config, *, timeout: float | None = None) -> None:
        """HandleReloadConfigRequest: a ModelServerConfig (or its text form) replaces the server's model list."""
        if isinstance(config, str):
            from google.protobuf import text_format
            config = text_format.Parse(config, model_server_config_pb2.ModelServerConfig())
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        response = self._call(self._models.HandleReloadConfigRequest, request, timeout)
        if response.status.error_code:
            raise ServingError(code_name(response.status.error_code), response.status.error_message)
        with self._lock:
            self._signatures.clear()


def _detections(outputs: dict[str, np.ndarray], version: int) -> Detections:
    missing = [name for name in DETECTION_OUTPUTS if name not in outputs]
    if missing:
        raise ServingError("INVALID_ARGUMENT", f"not a detection model: outputs {', '.join(missing)} missing")
    num = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    embedding = outputs.get(EMBEDDING_OUTPUT)
    return Detections(
        boxes=np.asarray(outputs["detection_boxes"], dtype=np.float32)[0, :num],
        classes=np.asarray(outputs["detection_classes"])[0, :num].astype(np.int32),
        scores=np.asarray(outputs["detection_scores"], dtype=np.float32)[0, :num],
        num=num, model_version=version,
        embedding=None if embedding is None else np.asarray(embedding, dtype=np.float32).reshape(-1),
    )


def _read(image) -> bytes | np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    return image


def _pixels(image) -> np.ndarray:
    """An HxWx3 uint8 array from an array, encoded bytes or a path (decoded with Pillow, converted to RGB)."""
    image = _read(image)
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image as PILImage
        with PILImage.open(io.BytesIO(image)) as decoded:
            image = np.asarray(decoded.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def _encoded(image) -> bytes:
    """Encoded image bytes from bytes, a path, or an HxWx3 uint8 array (encoded as PNG)."""
    image = _read(image)
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image as PILImage
    buffer = io.BytesIO()
    PILImage.fromarray(_pixels(image)).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["ServingClient", "Detections", "Signature", "VersionStatus", "ServingError", "DETECTION_OUTPUTS",
           "EMBEDDING_OUTPUT"]
