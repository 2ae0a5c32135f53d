"""The round worker trains, evaluates and exports a real OD API model, and reuses its session across rounds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_CONFIG, long_test
from PIL import Image


def test_two_rounds_export_loadable_savedmodels_that_detect(tiny_models):
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"))[np.newaxis]
    outputs = []
    for version in tiny_models["versions"]:
        assert (version / "saved_model.pb").is_file() and (version / "variables" / "variables.index").is_file()
        model = tf.saved_model.load(str(version))
        result = model.signatures["serving_default"](input_tensor=tf.constant(image))
        assert result["detection_boxes"].shape[-1] == 4
        assert int(result["num_detections"][0]) > 0
        outputs.append(result["detection_scores"].numpy())
    # Round 2 continued from round 1's checkpoint and trained further: the served weights changed.
    assert not np.allclose(outputs[0], outputs[1])


def test_second_round_reuses_the_traced_session_and_continues_the_global_step(tiny_models):
    first, second = tiny_models["results"]
    assert not first.session_reused and second.session_reused
    assert first.train["global_step"] == 20 and second.train["global_step"] == 40
    assert first.counts == second.counts and first.counts["eval"] > 0
    assert 0.0 <= second.metrics["DetectionBoxes_Precision/mAP"] <= 1.0
    assert (first.round_id, second.round_id) == (1, 2)  # each answer names the job it answers


# A fresh worker session's exports, in a child process (the OD API needs its compat module imported before
# TensorFlow, which this test process has already imported): a whole SavedModel of a checkpoint, then an export
# whose rewrite is made to mismatch (a changed variable list), which must fall back to a whole save.
_EXPORTS = """
import json, sys
from pathlib import Path
from odal.daemon.worker import session as sessions
config, label_map, num_classes, round_dir, ckpt_2, ckpt_1, out = sys.argv[1:]
configs = sessions.load_configs(Path(config), Path(label_map), int(num_classes), Path(round_dir) / "train.record",
                                Path(round_dir) / "eval.record")
session = sessions.ModelSession(configs)
modes = [session.export(ckpt_2, Path(out) / "reference")]
session._graph.variables = session._graph.variables[:-1]
modes.append(session.export(ckpt_1, Path(out) / "fallback"))
print(json.dumps(modes))
"""


@pytest.fixture(scope="module")
def whole_saves(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole_saves")
    ckpt_1, ckpt_2 = tiny_models["checkpoints"]
    proc = subprocess.run([sys.executable, "-c", _EXPORTS, str(TINY_CONFIG), str(tiny_models["label_map"]),
                           str(len(tiny_models["labels"])), str(tiny_models["dir"] / "round"), ckpt_2, ckpt_1,
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"modes": json.loads(proc.stdout.splitlines()[-1]), "reference": out / "reference",
            "fallback": out / "fallback"}


def _variables(path: Path) -> dict:
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(str(path / "variables" / "variables"))
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _scores(path: Path, image: np.ndarray) -> np.ndarray:
    return tf.saved_model.load(str(path)).signatures["serving_default"](
        input_tensor=tf.constant(image))["detection_scores"].numpy()


def test_a_later_export_is_the_first_graph_with_new_weights_equal_to_a_whole_save(tiny_models, whole_saves):
    """Round 2 writes only weights (the graph is round 1's); it must be what a whole tf.saved_model.save of the
    same checkpoint writes: the same variable names (TF Serving's restore op asks for them), shapes and values."""
    first, second = tiny_models["results"]
    assert (first.export, second.export) == ("full", "weights")
    v1, v2 = tiny_models["versions"]
    reference = whole_saves["reference"]
    assert whole_saves["modes"][0] == "full"
    assert (v2 / "saved_model.pb").read_bytes() == (v1 / "saved_model.pb").read_bytes()
    mine, whole = _variables(v2), _variables(reference)
    assert sorted(mine) == sorted(whole) and len(mine) > 100
    assert all(np.array_equal(mine[name], whole[name]) for name in whole)
    old = _variables(v1)
    assert any(not np.array_equal(old[name], mine[name]) for name in mine)  # new weights, not round 1's again
    assert (tf.saved_model.experimental.read_fingerprint(str(v2)).checkpoint_hash
            != tf.saved_model.experimental.read_fingerprint(str(v1)).checkpoint_hash)
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"))[np.newaxis]
    assert np.array_equal(_scores(v2, image), _scores(reference, image))


def test_a_rewrite_that_does_not_match_the_whole_save_falls_back_to_a_whole_save(tiny_models, whole_saves):
    assert whole_saves["modes"][1].startswith("full (rewrite failed: RuntimeError: the rewritten variables")
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"))[np.newaxis]
    assert np.array_equal(_scores(whole_saves["fallback"], image), _scores(tiny_models["versions"][0], image))


# Two rounds in one session whose record files live in different round folders; the first folder is deleted
# before the second round (as retention deletes old rounds).  The session builds its datasets once, so they must
# read each round's files, not the first round's.
_TWO_FOLDERS = """
import json, shutil, sys
from pathlib import Path
from odal.daemon.worker import session as sessions
config, label_map, num_classes, first, second = sys.argv[1:]
session = checkpoint = None
for folder in (first, second):
    configs = sessions.load_configs(Path(config), Path(label_map), int(num_classes), Path(folder) / "train.record",
                                    Path(folder) / "eval.record")
    session = session or sessions.ModelSession(configs)
    session.train(configs, 2, checkpoint, None, lambda *args: None)
    metrics = session.evaluate(configs)
    checkpoint = session.save(Path(folder).with_name(Path(folder).name + "-ckpt"))
    shutil.rmtree(folder)
print(json.dumps({"global_step": int(session.global_step.numpy()), "metrics": len(metrics)}))
"""


def test_a_session_reads_each_rounds_records_after_the_previous_round_folder_is_gone(tiny_models, tmp_path):
    folders = []
    for name in ("round-1", "round-2"):
        folder = tmp_path / name
        folder.mkdir()
        for record in ("train.record", "eval.record"):
            shutil.copyfile(tiny_models["dir"] / "round" / record, folder / record)
        folders.append(str(folder))
    proc = subprocess.run([sys.executable, "-c", _TWO_FOLDERS, str(TINY_CONFIG), str(tiny_models["label_map"]),
                           str(len(tiny_models["labels"])), *folders], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["global_step"] == 4 and result["metrics"] > 0


# make test covers retirement through a real daemon with a prewarm (tests/test_prewarm.py: retired after every round,
# the successor prewarmed); this one is the path without a prewarm (the next round starts its child itself).
@long_test
def test_the_daemons_worker_is_retired_after_a_round_that_left_it_above_its_memory_limit(tiny_models, tmp_path):
    """[training] worker_max_mb: a child above it after a round is ended; the next round runs in a fresh one
    (which builds its session again) and still publishes a usable model."""
    from structlog.testing import capture_logs

    from odal.daemon.rounds.contracts import RoundJob
    from odal.daemon.rounds.worker_client import Worker

    worker = Worker(tmp_path / "worker.log", max_rss=1 << 20)  # 1 MiB: every TensorFlow child is above it
    results, pids = [], []
    try:
        with capture_logs() as logs:
            for number in (1, 2):
                job = RoundJob(
                    round_id=number, round_dir=tiny_models["dir"] / "round", pipeline_config=TINY_CONFIG,
                    label_map=tiny_models["label_map"], num_classes=len(tiny_models["labels"]), steps=2,
                    init_checkpoint=tiny_models["checkpoints"][0] if number == 1 else results[0].checkpoint,
                    checkpoint_dir=tmp_path / f"ckpt-{number}", export_dir=tmp_path / "export" / str(number))
                results.append(worker.run(job))
                pids.append(worker.pid)
    finally:
        worker.stop()
    retired = [e for e in logs if e["event"] == "worker_retired"]
    assert len(retired) == 2 and retired[0]["pid"] != retired[1]["pid"] and retired[0]["max_mb"] == 1
    assert pids == [None, None]  # no child left running after either round
    assert [r.session_reused for r in results] == [False, False]
    assert [r.export for r in results] == ["full", "full"]
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"))[np.newaxis]
    assert _scores(tmp_path / "export" / "2", image).shape[-1] > 0
