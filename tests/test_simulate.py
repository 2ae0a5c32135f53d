"""``odal simulate``: the short form end to end (real worker, real ``odal serve``, real gRPC), killed mid-run and
resumed; and the summary's arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RACCOON
from odal.daemon.commands import simulate_data, simulate_report

SHORT = ["--images", str(RACCOON), "--model", "tiny", "--steps", "3", "--strategies", "random,uncertainty",
         "--seed-labels", "4", "--batch", "4", "--rounds", "1", "--repeats", "1", "--test-fraction", "0.04",
         "--no-full"]


def _simulate(out: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "odal"), "simulate", *SHORT, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _rounds_done(out: Path) -> int:
    try:
        data = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(len(run["rounds"]) for run in data["runs"].values())


@pytest.mark.slow
def test_short_simulation_killed_and_resumed_matches_the_uninterrupted_structure(tmp_path):
    out = tmp_path / "sim"
    first = _simulate(out)
    deadline = time.monotonic() + 900
    while _rounds_done(out) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()
    os.kill(first.pid, signal.SIGKILL)  # a crash mid-run: round 1 of random is being chosen or trained
    first.wait()
    time.sleep(2)  # its children (worker, server) notice it is gone

    second = _simulate(out)
    text, _ = second.communicate(timeout=900)
    assert second.returncode == 0, text
    assert "1/4 rounds done" in text  # it went on from the recorded round instead of starting again

    data = json.loads((out / "results.json").read_text())
    split = data["repeats"]["0"]
    assert len(split["test"]) == 8 and len(split["seed"]) == 4
    runs = {name: run for name, run in data["runs"].items()}
    assert sorted(runs) == ["random/0", "uncertainty/0"]
    for name, run in runs.items():
        assert run["done"] and run["pending"] is None
        assert [r["round"] for r in run["rounds"]] == [0, 1], name
        assert [r["labels"] for r in run["rounds"]] == [4, 8], name
        assert run["rounds"][0]["added"] == split["seed"], name  # the same seed set for every strategy
        chosen = run["rounds"][1]["added"]
        assert len(set(chosen)) == 4 and not set(chosen) & (set(split["seed"]) | set(split["test"])), name
        assert all(isinstance(r["mAP@0.5"], float) for r in run["rounds"]), name
        assert 0 < run["rounds"][0]["version"] < run["rounds"][1]["version"], name  # each round published one
        # The test set each run evaluated on is the same file, and none of it was ever trained on.
        workspace = out / "runs" / name.replace("/", "-r")
        held_out = [json.loads(line)["path"] for line in (workspace / "heldout" / "test.jsonl").open()]
        assert held_out == split["test"], name
        exported = [json.loads(line)["path"] for line in (workspace / "exports" / "annotations.jsonl").open()]
        assert sorted(set(exported)) == sorted(split["seed"] + chosen), name
    summary = (out / "summary.md").read_text()
    assert "| random |" in summary and "| uncertainty |" in summary and summary in text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_splits_are_the_same_for_every_call_and_disjoint():
    keys = [f"img{i:03d}.jpg" for i in range(50)]
    one = simulate_data.split(keys, seed=3, repeat=1, test_size=10, seed_labels=5)
    assert one == simulate_data.split(list(reversed(keys)), seed=3, repeat=1, test_size=10, seed_labels=5)
    assert one != simulate_data.split(keys, seed=3, repeat=2, test_size=10, seed_labels=5)
    assert not set(one.test) & set(one.pool) and set(one.seed) <= set(one.pool)
    assert len(one.test) == 10 and len(one.pool) == 40 and len(set(one.seed)) == 5


def _run(strategy: str, repeat: int, values: list[float]) -> dict:
    rounds = [{"round": i, "labels": 10 + 10 * i, "mAP@0.5": v, "mAP": v / 2, "per_class": {}}
              for i, v in enumerate(values)]
    return {"strategy": strategy, "repeat": repeat, "done": True, "pending": None, "rounds": rounds}


def test_summary_numbers():
    data = {"settings": {"source": "/x/raccoon", "strategies": ["random", "diverse"], "images": 100, "test_size": 20,
                         "labels": ["raccoon"], "model": "ssdlite", "steps": 10, "seed_labels": 10, "rounds": 2,
                         "batch": 10, "repeats": 2},
            "runs": {"random/0": _run("random", 0, [0.2, 0.4, 0.6]), "random/1": _run("random", 1, [0.2, 0.4, 0.6]),
                     "diverse/0": _run("diverse", 0, [0.2, 0.5, 0.6]), "diverse/1": _run("diverse", 1, [0.2, 0.5, 0.8])},
            "full": {"labels": 80, "rounds": [{"mAP@0.5": 0.5}, {"mAP@0.5": 0.6}]}}
    rounds = data["runs"]["diverse/1"]["rounds"]
    assert simulate_report.auc(rounds) == pytest.approx((0.35 * 10 + 0.65 * 10) / 20)
    assert simulate_report.labels_to_reach(rounds, 0.54) == pytest.approx(20 + 10 * 0.04 / 0.3)
    assert simulate_report.labels_to_reach(rounds, 0.9) is None
    text = simulate_report.summary(data)
    # AUC 0.45 and 0.5; 90% (0.54) reached at 24 and 21.3 labels; gains (mean of rounds 1-2) 5 and 15 points.
    assert "| diverse | 0.475 ± 0.035 | 23 ± 2 | 10.0 ± 7.1 | +10.0 |" in text
    assert "90% of it: 0.540" in text


def test_per_class_ap_of_served_answers():
    from odal.daemon.commands.simulate_classes import per_class_ap
    from odal.daemon.sources.datasets import GroundTruth
    from odal.serving.client import Detections
    import numpy as np

    items = {"a.jpg": GroundTruth(Path("a.jpg"), 200, 100, (("cell", 20.0, 10.0, 60.0, 50.0),)),
             "b.jpg": GroundTruth(Path("b.jpg"), 200, 100, (("cell", 100.0, 50.0, 180.0, 90.0),
                                                            ("platelet", 0.0, 0.0, 40.0, 20.0)))}
    data = simulate_data.LabelledSet(Path("."), items, ["cell", "platelet", "wbc"])

    def answer(boxes, classes):  # the client's answer: normalised [ymin, xmin, ymax, xmax], label-map ids
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int32),
                          np.full(len(classes), 0.9, np.float32), len(classes), 1)

    exact = [answer([[0.1, 0.1, 0.5, 0.3]], [1]), answer([[0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2]], [1, 2])]
    found = per_class_ap(data, ["a.jpg", "b.jpg"], exact)
    assert found["cell"] == {"AP": 1.0, "AP@0.5": 1.0} and found["platelet"]["AP@0.5"] == 1.0
    assert found["wbc"] == {"AP": None, "AP@0.5": None}  # no box of it in the test set: not measured
    wrong_class = [answer([[0.1, 0.1, 0.5, 0.3]], [2]), answer([[0.5, 0.5, 0.9, 0.9]], [2])]
    missed = per_class_ap(data, ["a.jpg", "b.jpg"], wrong_class)
    assert missed["cell"]["AP@0.5"] == 0.0 and missed["platelet"]["AP@0.5"] == 0.0
