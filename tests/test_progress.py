"""A round's training progress: an info log line every tenth of the round with step, total, loss, steps/s and ETA,
and the same in the status file that ``odal status --watch`` reads."""

from __future__ import annotations

import io
import json

from odal.daemon.rounds.contracts import Progress
from odal.daemon.rounds.progress import RoundProgress
from odal.daemon.store import statusfile
from odal.daemon.system import log as logs


def test_training_progress_is_logged_at_info_every_tenth_of_the_round_and_written_to_the_status_file(tmp_path):
    stream = io.StringIO()
    logs.configure("info", stream=stream)  # the daemon's default level: debug lines must not be needed
    status = statusfile.StatusFile(tmp_path, min_interval=0)
    now = [100.0]
    progress = RoundProgress(7, 200, logs.get("odal.round").bind(round=7), status.set, clock=lambda: now[0])
    progress(Progress(7, "train"))
    for step in range(10, 201, 10):  # the worker reports every 10 steps; here 5 steps a second
        progress(Progress(7, "train", step, 200, 1.0 / step))
        if step == 100:
            assert statusfile.read(tmp_path)["detail"] == {
                "round": 7, "stage": "train", "step": 100, "of": 200, "loss": 0.01, "steps_per_second": 5.0,
                "eta_seconds": 20.0}
        now[0] += 2.0
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "stage_started" and lines[0]["round"] == 7
    steps = [line for line in lines if line["event"] == "train_progress"]
    assert [line["step"] for line in steps] == list(range(20, 201, 20))  # 10 lines, not 20, not none
    assert all(line["level"] == "info" and line["of"] == 200 for line in steps)
    assert steps[-1]["eta_seconds"] == 0.0 and steps[-1]["loss"] == 0.005


def test_a_status_without_detail_clears_the_last_rounds_progress(tmp_path):
    status = statusfile.StatusFile(tmp_path, min_interval=0)
    status.set("round 1: training 10/20", {"stage": "train", "step": 10, "of": 20})
    status.set("idle")
    assert statusfile.read(tmp_path)["detail"] is None and statusfile.read(tmp_path)["text"] == "idle"
