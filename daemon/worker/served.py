"""Evaluate the version that serves, in the round's own session: its weights, the candidate's eval images.

The served SavedModel's ``variables/`` is a checkpoint of the exported module, whose ``_model`` is the detection
model: the same architecture as the session's model, so its weights restore into it by the object graph, whatever
checkpoint the version came from (a rolled-back-to version, a version whose round checkpoint was deleted by
retention).  The live (candidate) weights are copied aside first and put back afterwards, so the session goes on
exactly as it was; the evaluation itself is :meth:`ModelSession.evaluate` on the same eval dataset, so both numbers
come from the same images, evaluator and code.  Cost: one more evaluation and a restore of the model's variables
(see README, "The publish gate").
"""

from __future__ import annotations

from pathlib import Path

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import numpy as np
import tensorflow as tf

from odal.daemon.worker import tf_private


class ServedMismatch(RuntimeError):
    """The served version's weights do not fit this round's model (another architecture or class count)."""


def evaluate_served(session, configs: dict, saved_model_dir: Path, summary_dir: Path | None = None) -> dict:
    """COCO metrics of the SavedModel in ``saved_model_dir`` on the session's eval data; the session's live
    weights are unchanged afterwards.  Raises :class:`ServedMismatch` (or TensorFlow's error) when its weights
    cannot stand in for the model's."""
    model = session.evaluation_model()
    weights = [v for v in model.variables if v is not session.global_step]
    live = [np.array(v.numpy(), copy=True) for v in weights]
    try:
        status = tf.train.Checkpoint(_model=model).restore(
            str(Path(saved_model_dir) / "variables" / "variables"))
        status.expect_partial()
        # Every weight of the model must have come from the served version, else we would evaluate a mixture.
        restored = {id(value) for value in tf_private.restore_coordinator(status).object_by_proto_id.values()}
        missing = [v.name for v in weights if id(v) not in restored]
        if missing:
            raise ServedMismatch(f"{len(missing)} of {len(weights)} weights are not in {saved_model_dir} "
                                 f"(first: {missing[0]})")
        del status
        return session.evaluate(configs, summary_dir)
    finally:
        for variable, value in zip(weights, live):
            variable.assign(value)
        # An evaluation that failed half-way leaves the model in inference mode; training must not go on in it.
        tf_private.set_training(model)  # the evaluated model: under a strategy, the one-device copy
