"""A fine-tune checkpoint restores into a session whose train step was already traced (the prewarm does that
before round 1): the OD API model then holds the train step's variable, which no fine-tune checkpoint has.
Before the fix, every `make demo` (pretrained start, type "full") failed round 1 on it."""

from __future__ import annotations

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import pytest
import tensorflow as tf

from conftest import TINY_CONFIG
from odal.daemon.sources import datasets
from odal.daemon.worker import prewarm
from odal.daemon.worker import session as sessions

pytestmark = pytest.mark.slow


def test_a_full_fine_tune_checkpoint_restores_after_the_train_step_was_traced(tmp_path):
    prewarm._sample_round(tmp_path)  # noqa: SLF001  (one generated image, both splits, class 1)
    datasets.write_label_map(tmp_path / "label_map.pbtxt", ["sample"])
    configs = sessions.load_configs(TINY_CONFIG, tmp_path / "label_map.pbtxt", 1, tmp_path / "train.record",
                                    tmp_path / "eval.record")
    sessions.adjustments(configs)
    source = sessions.ModelSession(configs)
    source.trace_train(configs)
    prefix = tf.train.Checkpoint(model=source.model).write(str(tmp_path / "start" / "ckpt"))

    session = sessions.ModelSession(configs)
    session.trace_train(configs)  # as the prewarm: the model now keeps the step variable
    restored = sessions.restore_fine_tune(session.model, prefix, "full", session.train_config,
                                          session._dataset(configs, "train"))  # noqa: SLF001
    assert restored["restored"] > 0 and restored["fresh"] == 0
    # The weights, in the same order (Keras renames the second copy; the step variable is not a weight).
    mine, theirs = ([v for v in model.variables if "global_step" not in v.name] for model in (session.model,
                                                                                              source.model))
    assert len(mine) == len(theirs) and all((a.numpy() == b.numpy()).all() for a, b in zip(mine, theirs))
