"""``odal status``: a compact table (at most 100 columns) marking the live version, a queue line that reads
right, ``--json`` with ISO times and rounded numbers, and ``--watch``: a live view of a real status file and ledger
(rich on a terminal, plain lines in a pipe)."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from daemon_harness import make_workspace
from odal.daemon import cli
from odal.daemon.commands.status import queue_line
from odal.daemon.commands.watch import watch
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger
from odal.daemon.store.statusfile import StatusFile
from odal.daemon.system.lock import WorkspaceLock

GATE = {"metric": "mAP@0.5", "tolerance": 0.0, "passed": True, "candidate": 0.61234567, "served": 0.5401,
        "served_version": 1, "reason": "0.612 >= 0.540", "eval_images": 10, "eval_set": {"source": "split"}}
TIMINGS = {"records": 1.23456, "train": 80.987654, "evaluate": 12.3, "evaluate_served": 11.9, "export": 20.5,
           "publish": 0.0123, "confirm": 3.3, "total": 130.123456}


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A workspace whose ledger holds three finished rounds (two published versions) and a fourth training."""
    (tmp_path / "ws" / "images").mkdir(parents=True)
    config = make_workspace(tmp_path / "ws", [])
    work = config.parent / "work"
    work.mkdir()
    Ledger(work / "ledger.sqlite").close()
    history = History(work / "ledger.sqlite")
    for round_id, (state, version) in enumerate([("published", 1), ("published", 2), ("held_back", None)], 1):
        history.start_round(round_id)
        history.update_round(round_id, accepted=50 * round_id, n_train=40 * round_id, n_eval=10 * round_id,
                             steps=200, metrics={"mAP": 0.123456789 * round_id, "mAP@0.5": 0.2345678 * round_id},
                             timings=TIMINGS, gate=dict(GATE, passed=state == "published"))
        history.finish_round(round_id, state, version=version)
        if version:
            history.record_version(version, round_id, config.parent / "models" / "odal" / str(version),
                                   {"mAP": 0.12345678, "mAP@0.5": 0.2345678}, "confirmed")
    history.start_round(4)
    history.close()
    return config.parent


def test_the_table_fits_100_columns_and_marks_the_live_version(workspace, capsys):
    assert cli.main(["status", "--workspace", str(workspace)]) == 0
    shown = capsys.readouterr().out
    table = shown.split("\nrounds\n")[1].split("\ngate ")[0].splitlines()
    assert len(table) == 6 and all(len(line) <= 100 for line in table), "\n".join(table)
    assert table[2].split()[:3] == ["2", "published", "80/20"] and table[2].split()[-3:-1] == ["2", "*"]
    assert "2m10s" in table[2] and table[-1] == "* the version TF Serving serves now"
    assert "serving    version 2" in shown and " *   2  confirmed" in shown


def test_json_has_iso_times_and_rounded_numbers(workspace, capsys):
    assert cli.main(["status", "--workspace", str(workspace), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["rounds"][0]
    assert datetime.fromisoformat(first["started_at"]).tzinfo is not None
    assert datetime.fromisoformat(data["versions"][0]["published_at"])
    assert first["metrics"] == {"mAP": 0.1235, "mAP@0.5": 0.2346} and first["gate"]["candidate"] == 0.6123
    assert first["timings"]["total"] == 130.1 and first["timings"]["publish"] == 0.0
    assert data["live_version"] == 2


def test_the_queue_line_says_what_waits_for_the_new_model():
    """Was "54 images, 28 scored (newest by version 2), 54 to score", which reads as a contradiction."""
    line = queue_line({"images": 54, "scored": 28, "pending": 54, "target_version": 3, "scored_version": 2})
    assert line == "54 images: 0 scored by version 3, 54 waiting (26 new, 28 scored by an older version)"
    assert queue_line({"images": 5, "scored": 5, "pending": 0, "target_version": 3, "scored_version": 3}) == \
        "5 images: 5 scored by version 3, 0 waiting"
    assert queue_line({"images": 9, "scored": 0, "pending": 9, "target_version": None, "scored_version": None}) == \
        "9 images, to be scored once a first version is published"


def _training(workspace: Path) -> WorkspaceLock:
    """The daemon's side, for real: it holds the lock and writes its status file while round 4 trains."""
    lock = WorkspaceLock(workspace / "work")
    lock.acquire()
    StatusFile(workspace / "work").set("round 4: training 120/200", {
        "round": 4, "stage": "train", "step": 120, "of": 200, "loss": 0.41234, "steps_per_second": 1.9,
        "eta_seconds": 42.0})
    return lock


def test_watch_shows_stage_step_loss_eta_and_the_last_rounds_on_a_terminal(workspace):
    lock = _training(workspace)
    try:
        console = Console(force_terminal=True, record=True, width=100, file=io.StringIO())
        assert watch(workspace / "odal.toml", interval=0.01, console=console, updates=1) == 0
    finally:
        lock.release()
    screen = console.export_text()
    assert "round 4: training 120/200" in screen and "step 120/200" in screen
    assert "loss 0.4123" in screen and "1.9 steps/s" in screen and "ETA 42s" in screen
    rows = [line for line in screen.splitlines() if line.strip().startswith(("1 ", "2 ", "3 ", "4 "))]
    cells = [[cell.strip() for cell in row.split("│")] for row in rows[-4:]]  # the last frame drawn
    assert [c[1] for c in cells] == ["published", "published", "held_back", "running"], screen
    assert [c[4] for c in cells] == ["pass", "pass", "held", "-"] and [c[5] for c in cells] == ["1", "2 *", "-", "-"]
    last_frame = "workspace  " + screen.split("workspace  ")[-1]  # each redraw starts with the workspace line
    assert all(len(line) <= 100 for line in last_frame.splitlines()), last_frame


def test_watch_prints_plain_lines_when_not_a_terminal(workspace):
    out = io.StringIO()
    assert watch(workspace / "odal.toml", interval=0.01, console=Console(file=out), updates=3) == 0
    assert out.getvalue().count("\n") == 1 and out.getvalue().split("  ", 1)[1] == "not running\n"  # once, not 3x
    lock = _training(workspace)
    try:
        out = io.StringIO()
        watch(workspace / "odal.toml", interval=0.01, console=Console(file=out), updates=2)
    finally:
        lock.release()
    assert "\x1b" not in out.getvalue()
    assert out.getvalue().split("  ", 1)[1] == "round 4: training 120/200  loss 0.4123  1.9 steps/s  ETA 42s\n"
