"""TF Serving's SavedModel warm-up file: ``assets.extra/tf_serving_warmup_requests``, written and replayed.

The file is a TFRecord of ``PredictionLog`` protos, each holding a ``PredictRequest`` (TF Serving's documented
format, "SavedModel Warmup").  A server that loads a version replays them before it marks the version AVAILABLE,
so the first client request after a hot reload does not pay the first run of the graph (kernel selection,
allocations, lazily built functions).  odal's worker writes one request built from a real annotated image of the
round into every export (``write``); ``odal serve --enable_model_warmup`` (default on, as in TF Serving) replays
it (``replay``) with TF Serving's bounds: at most 1000 records, each at most ``limits.max_tensor_bytes`` a tensor.
A warm-up request that fails fails the load, as in TF Serving.  This module imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from odal.serving import tensors
from odal.serving.errors import ServingError
from odal.serving.limits import DEFAULT, Limits

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's kMaxNumRecords
SIGNATURE = "serving_default"

log = logging.getLogger(__name__)


def write(export_dir: Path, image: np.ndarray, model_name: str = "", input_key: str = "input_tensor") -> Path:
    """One PredictionLog asking ``export_dir``'s serving signature about ``image`` (uint8 [H, W, 3]), written as
    TF Serving's warm-up file inside the export (which is not published yet: the caller publishes it)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    tensors.to_proto(np.asarray(image, dtype=np.uint8)[np.newaxis], out=request.inputs[input_key])
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())
    return path


def requests(export_dir: str, limits: Limits = DEFAULT) -> list[tuple[str, dict[str, np.ndarray], list[str]]]:
    """The warm-up file's predict requests as (signature, inputs, output filter); [] when there is none."""
    path = os.path.join(export_dir, str(WARMUP_FILE))
    if not os.path.isfile(path):
        return []
    found = []
    try:
        for index, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if index >= MAX_RECORDS:
                raise ServingError("INVALID_ARGUMENT", f"{path}: more than {MAX_RECORDS} warm-up records")
            log = prediction_log_pb2.PredictionLog.FromString(raw)
            if log.WhichOneof("log_type") != "predict_log":
                raise ServingError("UNIMPLEMENTED", f"{path}: record {index}: only predict_log warm-up requests "
                                                    f"are supported, not {log.WhichOneof('log_type')}")
            request = log.predict_log.request
            inputs = {key: tensors.from_proto(proto, limits.max_tensor_bytes, limits.max_fill_bytes)
                      for key, proto in request.inputs.items()}
            found.append((request.model_spec.signature_name or SIGNATURE, inputs, list(request.output_filter)))
    except tf.errors.OpError as error:
        raise ServingError("DATA_LOSS", f"{path}: not a readable TFRecord file: {error.message}") from None
    return found


def replay(servable, export_dir: str, limits: Limits = DEFAULT, iterations: int = 1) -> int:
    """Run every warm-up request ``iterations`` times on ``servable`` (a ``loader.Servable``); how many ran."""
    ran = 0
    for signature, inputs, output_filter in requests(export_dir, limits):
        if signature not in servable.signature_defs:
            raise ServingError("FAILED_PRECONDITION", f"warm-up request for signature {signature!r}, which "
                                                      f"{export_dir} does not have")
        wanted = set(servable.signature_defs[signature].inputs)
        if set(inputs) != wanted:
            raise ServingError("INVALID_ARGUMENT", f"warm-up request inputs {sorted(inputs)} do not match the "
                                                   f"signature's {sorted(wanted)} in {export_dir}")
        outputs = output_filter or list(servable.signature_defs[signature].outputs)
        for _ in range(max(iterations, 1)):
            servable.run(signature, inputs, outputs)
            ran += 1
    return ran


def loader(enabled: bool, limits: Limits = DEFAULT, iterations: int = 1, reuse: bool = True):
    """The registry's load function: a ``loader.Servable`` (with ``reuse``, a version whose graph is already loaded
    gets only its variables read: serving/reuse.py), warmed up by its export's requests when ``enabled`` (the
    version becomes AVAILABLE only after that)."""
    from odal.serving.reuse import Loader

    full_or_reused = Loader(reuse)

    def load(export_dir: str):
        servable = full_or_reused(export_dir)
        if enabled:
            started = time.monotonic()
            ran = replay(servable, export_dir, limits, iterations)
            if ran:
                log.info("%s: %d warm-up request(s) replayed in %.2fs", export_dir, ran, time.monotonic() - started)
        return servable

    load.loader = full_or_reused  # its graph cache, which serving/template.py fills ahead
    return load
