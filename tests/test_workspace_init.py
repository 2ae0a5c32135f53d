"""``odal init`` writes a workspace that the daemon accepts and whose first round trains from the pretrained start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from daemon_harness import odal_cli

from odal.daemon import config as config_module
from odal.daemon.sources import datasets
from odal.daemon.worker.pretrained import checkpoint_prefix


def _values(prefix: str | Path, contains: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if contains in key and key.endswith("VARIABLE_VALUE")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("init")
    images = root / "images"
    datasets.generate_shapes(images, 2, seed=3)
    proc = odal_cli("init", str(root / "ws"), "--images", str(images), "--labels", "square,disc", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "ws"


def test_init_writes_a_workspace_the_daemon_accepts_that_fine_tunes_the_pretrained_start(workspace):
    cfg = config_module.load(workspace / "odal.toml")
    assert (workspace / "exports").is_dir() and cfg.label_map.read_text().count("item {") == 2
    start = cfg.fine_tune_checkpoint
    assert Path(start + ".index").is_file() and cfg.fine_tune_checkpoint_type == "full"
    pipeline = cfg.pipeline_config.read_text()  # the OD API's own convention names the same start
    assert f'fine_tune_checkpoint: "{start}"' in pipeline and 'fine_tune_checkpoint_type: "full"' in pipeline
    # The start: the converted feature extractor and box head; the class head is new (2 classes, not person).
    converted = checkpoint_prefix()
    ours, theirs = _values(start, "/_feature_extractor/"), _values(converted, "/_feature_extractor/")
    assert len(ours) > 250 and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    ours, theirs = _values(start, "/box_encodings/"), _values(converted, "/box_encodings/")
    assert len(ours) == 42 and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    class_shapes = {v.shape for v in _values(start, "/class_predictions_with_background/").values()}
    assert (1, 1, 576, 9) in class_shapes  # 3 anchors x (2 classes + background) on the first feature map


# In a child process (the OD API needs its compat module imported before TensorFlow, which this process has):
# the first round's train stage as the worker runs it (session.train with the fine_tune job odal.toml gives it),
# one step, and the trained weights saved as a round saves them.
_FIRST_ROUND = """
import sys
from pathlib import Path
from odal.daemon import config as config_module
from odal.daemon.rounds.contracts import FineTune
from odal.daemon.worker import session as sessions
from odal.daemon.worker.tfrecords import write_records
workspace, round_dir = Path(sys.argv[1]), Path(sys.argv[2])
cfg = config_module.load(workspace / "odal.toml")
write_records(round_dir / "annotations.jsonl", round_dir)
configs = sessions.load_configs(cfg.pipeline_config, cfg.label_map, 2, round_dir / "train.record",
                                round_dir / "eval.record")
session = sessions.ModelSession(configs)
fine_tune = FineTune(cfg.fine_tune_checkpoint, cfg.fine_tune_checkpoint_type)
session.train(configs, 1, None, fine_tune, lambda *a: None)
print("RESULT", session.save(round_dir / "trained"))
"""


def test_first_round_of_an_init_workspace_trains_from_the_pretrained_weights(workspace, tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 4, seed=4)
    labels = list(datasets.SHAPE_LABELS)
    with open(tmp_path / "annotations.jsonl", "w") as out:
        for index, item in enumerate(items):
            boxes = [{"label": label, "label_id": labels.index(label) + 1, "xmin": x0 / item.width,
                      "ymin": y0 / item.height, "xmax": x1 / item.width, "ymax": y1 / item.height}
                     for label, x0, y0, x1, y1 in item.boxes]
            out.write(json.dumps({"input_hash": str(index), "image_path": str(item.image), "boxes": boxes,
                                  "split": "train"}) + "\n")
    proc = subprocess.run([sys.executable, "-c", _FIRST_ROUND, str(workspace), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start_prefix = config_module.load(workspace / "odal.toml").fine_tune_checkpoint
    trained, start = {}, {}
    for part in ("/_feature_extractor/", "/box_encodings/"):  # backbone with the extra layers, and the box head
        trained.update(_values(proc.stdout.split("RESULT", 1)[1].strip(), part))
        start.update(_values(start_prefix, part))
    kernels = [key for key in start if "kernel/" in key]
    assert len(kernels) > 60 and set(kernels) <= set(trained)
    # One step moves the pretrained weights a little; a model that ignored the start (or restored only part of
    # it) would have kernels unrelated to them.
    corr = {key: np.corrcoef(trained[key].ravel(), start[key].ravel())[0, 1] for key in kernels}
    assert min(corr.values()) > 0.99, sorted(corr.items(), key=lambda kv: kv[1])[:3]


@pytest.mark.parametrize("args, message", [
    (["--labels", "a,,b"], "--labels"),
    (["--labels", "a,a"], "--labels"),
    (["--labels", "a", "--model", "big"], "invalid choice"),
])
def test_init_refuses_bad_arguments_and_writes_nothing(tmp_path, args, message):
    proc = odal_cli("init", str(tmp_path / "ws"), "--images", str(tmp_path), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_init_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("mine")
    proc = odal_cli("init", str(tmp_path / "ws"), "--images", str(tmp_path), "--labels", "a")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["notes.txt"]
