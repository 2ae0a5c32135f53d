"""Every private TensorFlow / OD API internal odal uses, in one place (worker only; import after odapi_compat).

Each was checked on TensorFlow 2.21 with the OD API pinned in requirements-nodeps.txt; a TensorFlow upgrade
re-checks this file first (tests/test_worker.py exercises each: the weights-only export, the fine-tune counts,
the served-version evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import tensorflow as tf
from object_detection import model_lib_v2


def set_training(model) -> None:
    """Back to training mode after an evaluation: the learning phase and the OD API's own flag, as its eval loop
    leaves them otherwise.  Private: ``model._is_training`` (OD API meta-architectures; checked on TF 2.21)."""
    tf.keras.backend.set_learning_phase(True)
    model._is_training = True  # noqa: SLF001


def set_inference(model) -> None:
    """Inference mode for an evaluation, as ``eager_eval_loop`` sets it (the flag is read while tracing).
    Private: ``model._is_training`` (as :func:`set_training`)."""
    model._is_training = False  # noqa: SLF001
    tf.keras.backend.set_learning_phase(False)


def losses_and_predictions(model, features, labels, add_regularization_loss: bool):
    """(losses, predictions) of one eval batch, as the OD API's eval loop computes them.
    Private: ``model_lib_v2._compute_losses_and_predictions_dicts`` (OD API; checked with TF 2.21)."""
    return model_lib_v2._compute_losses_and_predictions_dicts(  # noqa: SLF001
        model, features, labels, training_step=None, add_regularization_loss=add_regularization_loss)


def ensure_model_is_built(model, dataset, unpad_groundtruth_tensors: bool) -> None:
    """Build the model's variables on one batch, as model_lib_v2's fine-tune start does.
    Private: ``model_lib_v2._ensure_model_is_built`` (OD API; checked with TF 2.21)."""
    model_lib_v2._ensure_model_is_built(model, dataset, unpad_groundtruth_tensors)  # noqa: SLF001


def unmatched_variables(status, roots: dict, ignore) -> list[str]:
    """Names of the variables reachable from ``roots`` (a restore map) that the restore ``status`` did not match,
    but ``ignore``: ``assert_existing_objects_matched`` for variables, less the one object it cannot be told to
    skip.  (The OD API 2.8 model keeps the train step's variable as ``model._training_step`` once a step has been
    traced or run, ``DetectionModel.provide_groundtruth``; a fine-tune checkpoint does not hold it; the stock loop
    restores before any step, odal's prewarm traces the step first.)"""
    matched = {id(value) for value in restore_coordinator(status).object_by_proto_id.values()}
    found = []
    for root in roots.values():
        for item in tf.train.TrackableView(root).descendants():
            if isinstance(item, tf.Variable) and item is not ignore and id(item) not in matched:
                found.append(item.name)
    return found


def restore_coordinator(status):
    """What a ``tf.train.Checkpoint.restore`` status matched: its ``object_graph_proto`` (the checkpoint's nodes)
    and ``object_by_proto_id`` (node id -> object restored).  Private: ``status._checkpoint`` (TF 2.21)."""
    return status._checkpoint  # noqa: SLF001 - TF keeps what matched only here


def save_keeping_graph_view(save: Callable[[], None]) -> list:
    """Run ``save`` (a ``tf.saved_model.save``) and return the object-graph views it listed its objects with (one
    per save), their caches filled.  Private: ``tensorflow.python.saved_model.save._AugmentedGraphView.__init__``
    patched for the duration (TF 2.21); an empty list when the class moved."""
    from tensorflow.python.saved_model import save as tf_save

    views: list = []
    view_class = getattr(tf_save, "_AugmentedGraphView", None)
    plain_init = getattr(view_class, "__init__", None)
    if plain_init is not None:
        def keeping_init(view, root):  # the view this save lists the object graph with, kept with its cache
            plain_init(view, root)
            views.append(view)

        view_class.__init__ = keeping_init
    try:
        save()
    finally:
        if plain_init is not None:
            view_class.__init__ = plain_init
    return views if plain_init is not None else []


def trackable_saver(view):
    """A saver that writes the variables of ``view``'s object graph under its names.
    Private: ``tensorflow.python.checkpoint.checkpoint.TrackableSaver`` (TF 2.21)."""
    from tensorflow.python.checkpoint import checkpoint as tf_checkpoint

    return tf_checkpoint.TrackableSaver(view)


def write_fingerprint(saved_model_dir: Path) -> None:
    """``fingerprint.pb`` of a SavedModel written without tf.saved_model.save.
    Private: ``tensorflow.python.saved_model.fingerprinting_utils.write_fingerprint`` (TF 2.21)."""
    from tensorflow.python.saved_model import fingerprinting_utils

    fingerprinting_utils.write_fingerprint(str(saved_model_dir))


def checkpoint_state(prefix_name: str) -> str:
    """The text of a ``checkpoint`` state file naming ``prefix_name`` (what tf.train.latest_checkpoint reads).
    Private: ``tensorflow.python.training.checkpoint_state_pb2`` (TF 2.21)."""
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    state = checkpoint_state_pb2.CheckpointState(model_checkpoint_path=prefix_name,
                                                 all_model_checkpoint_paths=[prefix_name])
    return text_format.MessageToString(state)


def keys_to_save(saver) -> tuple[dict, bytes]:
    """What ``saver`` (:func:`trackable_saver`) writes: {checkpoint key: the object whose value it is} and the
    serialised object graph it writes under ``_CHECKPOINTABLE_OBJECT_GRAPH``.
    Private: ``TrackableSaver._gather_serialized_tensors`` (TF 2.21)."""
    serialized, _, _, graph_proto = saver._gather_serialized_tensors(None)  # noqa: SLF001
    keys = {key: trackable for trackable, tensors in serialized.items() if trackable is not None
            for key in tensors}
    return keys, graph_proto.SerializeToString()


def checkpoint_variables(model) -> dict:
    """{checkpoint key: variable} of ``tf.train.Checkpoint(model=model)``, as its save would name them.
    Private: ``tensorflow.python.checkpoint.graph_view.ObjectGraphView`` (TF 2.21)."""
    import tensorflow as tf
    from tensorflow.python.checkpoint import graph_view

    root = tf.train.Checkpoint(model=model)  # the view holds it weakly
    keys, _ = keys_to_save(trackable_saver(graph_view.ObjectGraphView(root)))
    return {key: value for key, value in keys.items() if isinstance(value, tf.Variable)}
