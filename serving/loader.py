"""Load one SavedModel version in the server process and run its signatures (this module imports TensorFlow).

The signature definitions are read from ``saved_model.pb`` itself (the MetaGraphDef tagged ``serve``), exactly
what TF Serving reports as metadata and validates requests against; the functions come from
``tf.saved_model.load``.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from odal.serving import tensors
from odal.serving._protos import meta_graph_pb2, saved_model_pb2, types_pb2
from odal.serving.errors import ServingError, invalid_argument

SERVE_TAG = "serve"


def read_meta_graph(export_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The ``serve`` MetaGraphDef of a SavedModel, with TF's errors for a missing or unreadable file."""
    pb = os.path.join(export_dir, "saved_model.pb")
    if not os.path.exists(pb):
        raise ServingError("NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory "
                                        f"path: {export_dir}. Check that the directory exists and that you have "
                                        f"the right permissions for accessing it.")
    model = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as handle:
            model.ParseFromString(handle.read())
    except (DecodeError, OSError):
        raise ServingError("DATA_LOSS", f"Can't parse {pb} as binary proto") from None
    for meta_graph in model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [" ".join(m.meta_info_def.tags) for m in model.meta_graphs]
    raise ServingError("NOT_FOUND", f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }}. To "
                                    f"inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
                                    f"`saved_model_cli`; available tag-sets: {tags}")


_OPERROR_CODES = {
    tf.errors.CANCELLED: "CANCELLED", tf.errors.UNKNOWN: "UNKNOWN", tf.errors.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    tf.errors.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED", tf.errors.NOT_FOUND: "NOT_FOUND",
    tf.errors.ALREADY_EXISTS: "ALREADY_EXISTS", tf.errors.PERMISSION_DENIED: "PERMISSION_DENIED",
    tf.errors.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED", tf.errors.FAILED_PRECONDITION: "FAILED_PRECONDITION",
    tf.errors.ABORTED: "ABORTED", tf.errors.OUT_OF_RANGE: "OUT_OF_RANGE", tf.errors.UNIMPLEMENTED: "UNIMPLEMENTED",
    tf.errors.INTERNAL: "INTERNAL", tf.errors.UNAVAILABLE: "UNAVAILABLE", tf.errors.DATA_LOSS: "DATA_LOSS",
    tf.errors.UNAUTHENTICATED: "UNAUTHENTICATED",
}


def as_serving_error(exc: BaseException) -> ServingError:
    """A TF (or any) exception as the status TF Serving would report for it."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        return ServingError(_OPERROR_CODES.get(exc.error_code, "UNKNOWN"), exc.message)
    return ServingError("UNKNOWN", f"{type(exc).__name__}: {exc}")


class Servable:
    """One loaded version: its signature defs and a callable per signature."""

    keep = None  # what the functions need alive besides ``model`` (serving/reuse.py)

    def __init__(self, export_dir: str):
        self.export_dir = export_dir
        self.meta_graph = read_meta_graph(export_dir)
        self.signature_defs = self.meta_graph.signature_def
        try:
            self.model = tf.saved_model.load(export_dir, tags=[SERVE_TAG])
        except Exception as exc:  # noqa: BLE001 - reported as the version's load error
            error = as_serving_error(exc)
        else:
            error = None
        if error is not None:  # raised outside the handler: no chain back to the half-loaded model's frames
            raise error
        self.functions = {name: self.model.signatures[name]
                          for name in self.signature_defs if name in self.model.signatures}

    @classmethod
    def assembled(cls, export_dir: str, meta_graph, model, functions: dict, keep=None) -> "Servable":
        """A version made of parts already loaded (serving/reuse.py: a loaded graph's functions, new variables)."""
        servable = cls.__new__(cls)
        servable.export_dir, servable.meta_graph = export_dir, meta_graph
        servable.signature_defs = meta_graph.signature_def
        servable.model, servable.functions, servable.keep = model, functions, keep
        return servable

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_keys: list[str]) -> dict[str, np.ndarray]:
        """Run a signature on validated inputs; returns the requested outputs as numpy arrays."""
        function = self.functions.get(signature_name)
        if function is None:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.')
        signature = self.signature_defs[signature_name]
        feed = {}
        for index, (name, value) in enumerate(sorted(inputs.items())):
            expected = signature.inputs[name].dtype
            if expected == types_pb2.DT_STRING:
                values = np.asarray(value, dtype=object)
                flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.reshape(-1).tolist()]
                feed[name] = tf.reshape(tf.constant(flat, dtype=tf.string, shape=[len(flat)]), values.shape)
                continue
            want = tensors.numpy_dtype(expected)
            if value.dtype != want:
                raise invalid_argument(f"Expects arg[{index}] to be {tensors.dtype_name(expected)} but "
                                       f"{tensors.dtype_name(tensors.data_type(value))} is provided")
            feed[name] = tf.constant(value)
        try:
            outputs = function(**feed)
        except Exception as exc:  # noqa: BLE001 - a failed run is the caller's status
            raise as_serving_error(exc) from exc
        return {key: outputs[key].numpy() for key in output_keys}
