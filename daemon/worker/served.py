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

from odal.daemon.worker import eval_cache, tf_private


class ServedMismatch(RuntimeError):
    """The served version's weights do not fit this round's model (another architecture or class count)."""


def evaluate_served(session, configs: dict, saved_model_dir: Path, summary_dir: Path | None = None,
                    use_cache: bool = True, later: list | None = None) -> dict:
    """COCO metrics of the SavedModel in ``saved_model_dir`` on the session's eval data; the session's live
    weights are unchanged afterwards.  Raises :class:`ServedMismatch` (or TensorFlow's error) when its weights
    cannot stand in for the model's.

    When the session's :class:`~odal.daemon.worker.eval_cache.ServedCache` holds this version (same variables
    digest), the model runs only on the eval elements it has not seen, with the served weights assigned from
    memory; else every element is computed and the cache is bound to this version for the next round.
    ``later``: as :meth:`ModelSession.evaluate`'s (the TensorBoard images, drawn after the round's answer)."""
    model = session.evaluation_model()
    weights = [v for v in model.variables if v is not session.global_step]
    cache = session.served_cache if use_cache and not session.uses_eager_eval() else None
    identity = eval_cache.variables_digest(saved_model_dir) if cache is not None else None
    live = None

    def load_served() -> None:  # before the first element the cache misses
        nonlocal live
        live = _values(weights)
        for variable, value in zip(weights, cache.weights):
            variable.assign(value)

    try:
        if cache is not None and cache.matches(identity):
            return session.evaluate(configs, summary_dir, later, record=cache.outputs, reuse=cache.outputs,
                                    before_step=load_served)
        live = _values(weights)
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
        if cache is None:
            return session.evaluate(configs, summary_dir, later)
        cache.clear()
        outputs = eval_cache.Outputs()
        metrics = session.evaluate(configs, summary_dir, later, record=outputs)
        cache.bind(identity, outputs, _values(weights))
        return metrics
    finally:
        if live is not None:
            for variable, value in zip(weights, live):
                variable.assign(value)
        # An evaluation that failed half-way leaves the model in inference mode; training must not go on in it.
        tf_private.set_training(model)  # the evaluated model: under a strategy, the one-device copy


def remember_export(session, export_dir: Path, checkpoint_prefix: str, outputs) -> None:
    """After an export from ``checkpoint_prefix``: the candidate's eval outputs (``outputs``, computed with the live
    weights) and those weights become the cache of the version ``export_dir`` will be, if the live weights are
    still the exported checkpoint's; else the cache is emptied."""
    cache = session.served_cache
    if outputs is None or session.weights_from != checkpoint_prefix or session.uses_eager_eval():
        cache.clear()
        return
    weights = [v for v in session.evaluation_model().variables if v is not session.global_step]
    cache.bind(eval_cache.variables_digest(export_dir), outputs, _values(weights))


def _values(weights: list) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in weights]
