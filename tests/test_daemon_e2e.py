"""The whole loop with real things: a real daemon process, real inotify, real OD API training, real exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from daemon_harness import DaemonProcess, append_records, make_workspace, records_for
from odal.daemon.sources import datasets
from odal.daemon.store.ledger import Ledger

pytestmark = pytest.mark.slow


def _detect(version_dir, image_path):
    model = tf.saved_model.load(str(version_dir))
    image = np.asarray(Image.open(image_path).convert("RGB"))[np.newaxis]
    return model.signatures["serving_default"](input_tensor=tf.constant(image))


def _published(daemon) -> dict:
    event = daemon.wait_event("round_published", 900)
    assert event is not None, daemon.events[-10:]
    return event


def _versions(base):
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []


def test_appended_annotations_become_served_versions_across_a_restart(tmp_path):
    """Records appended to a db-out file -> version 1 that detects; restart; more records -> version 2; K=1 kept."""
    items = datasets.generate_shapes(tmp_path / "images", 20, seed=3)
    config = make_workspace(tmp_path / "ws", items, steps=15, min_new=8, debounce=1.0, eval_fraction=0.2,
                            versions=1)
    workspace = config.parent
    export = workspace / "exports" / "annotations.jsonl"
    base = workspace / "models" / "odal"

    with DaemonProcess(config) as daemon:
        append_records(export, records_for(items[:8]))
        _published(daemon)
        assert _versions(base) == [1]
        # at the default log level, training shows its progress (every 10 of its 15 steps, and the last)
        progress = [e for e in daemon.events if e["event"] == "train_progress"]
        assert [(e["step"], e["of"], e["level"]) for e in progress] == [(10, 15, "info"), (15, 15, "info")]
        assert progress[-1]["loss"] > 0 and progress[-1]["steps_per_second"] > 0
        result = _detect(base / "1", items[0].image)
        assert result["detection_boxes"].shape[-1] == 4 and int(result["num_detections"][0]) > 0
        assert json.loads((base / "1" / "assets.extra" / "odal.json").read_text())["round"] == 1

    # A restart must not ingest anything twice: the same file is read on from where it stopped.
    with DaemonProcess(config) as daemon:
        append_records(export, records_for(items[8:16]) + records_for(items[16:17], "reject")
                       + records_for(items[17:18], "ignore"))
        _published(daemon)
        assert _versions(base) == [2], "version 2 published and version 1 deleted by retention (K=1)"
        rounds = daemon.rounds()
        assert [r["state"] for r in rounds] == ["published", "published"]
        assert rounds[1]["accepted"] == 16 and rounds[1]["global_step"] == 30
        result = _detect(base / "2", items[9].image)
        assert int(result["num_detections"][0]) > 0

    ledger = Ledger(workspace / "work" / "ledger.sqlite")
    assert ledger.counts() == {"accepted": 16, "rejected": 1, "ignored": 1, "invalid": 0}
    ledger.close()

    odal = Path(sys.executable).parent / "odal"
    status = subprocess.run([str(odal), "status", "--workspace", str(workspace), "--json"],
                            capture_output=True, text=True, check=True)
    data = json.loads(status.stdout)
    assert data["annotations"] == {"accepted": 16, "rejected": 1, "ignored": 1, "invalid": 0}
    assert [v["version"] for v in data["versions"]] == [2]
    assert set(data["versions"][0]["metrics"]) >= {"mAP", "mAP@0.5"}


def test_raccoon_annotations_train_and_publish_a_raccoon_detector(tmp_path, raccoon):
    """The real raccoon data set (VOC boxes turned into Prodigy records) goes through the loop to a served version."""
    items = datasets.read_voc(raccoon)[:24]
    distinct = len({datasets.input_hash(item.image) for item in items})  # the set has byte-identical images
    config = make_workspace(tmp_path / "ws", items, steps=20, min_new=distinct, debounce=1.0, eval_fraction=0.2,
                            labels=["raccoon"])
    with DaemonProcess(config) as daemon:
        append_records(config.parent / "exports" / "raccoon.jsonl", records_for(items))
        event = _published(daemon)
        assert event["version"] == 1
        round_ = daemon.rounds()[0]
        assert round_["accepted"] == distinct and round_["n_train"] + round_["n_eval"] == distinct
        assert round_["n_eval"] >= 1
        assert 0.0 <= round_["metrics"]["mAP"] <= 1.0
    result = _detect(config.parent / "models" / "odal" / "1", items[0].image)
    assert set(np.unique(result["detection_classes"].numpy())) <= {1.0}, "one class: raccoon"
