"""Log and disk errors never stop the daemon: a removed log folder is made again, a full work dir is a degraded
state (shown by ``odal status``, retried with backoff, nothing lost once there is room), and a round whose worker
died on a full disk is recorded failed with its error.  Full disks are real: a small tmpfs (needs root)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess, append_records, make_workspace, odal_cli, records_for

from odal.daemon.sources import datasets
from odal.daemon.config import load
from odal.daemon.rounds.round import run_round
from odal.daemon.rounds.worker_client import Worker
from odal.daemon.store.history import History
from odal.daemon.system.log import RotatingFile


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m"):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to make room again)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * (1 << 16))
        with contextlib.suppress(OSError):
            while True:  # the last few bytes
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)
    return filler


def test_a_log_folder_removed_while_running_is_made_again_at_the_next_line_and_rotation(tmp_path):
    log = RotatingFile(tmp_path / "logs" / "daemon.jsonl", max_bytes=200, backups=2, check_every=0.0)
    log.write("one\n")
    subprocess.run(["rm", "-rf", str(tmp_path / "logs")], check=True)
    for n in range(20):  # rotations included
        log.write(f"line {n:02d} {'x' * 40}\n")
    assert (tmp_path / "logs" / "daemon.jsonl").read_text().endswith(f"line 19 {'x' * 40}\n")
    log.close()


def test_the_daemon_keeps_running_and_logging_when_its_logs_folder_is_removed(tmp_path):
    """Defect: the daemon exited at the next rotation (FileNotFoundError, then I/O operation on closed file)."""
    items = datasets.generate_shapes(tmp_path / "images", 4, seed=3)
    config = make_workspace(tmp_path / "ws", items, min_new=1000)
    config.write_text(config.read_text().replace('file = "work/logs/daemon.jsonl"',
                                                 'file = "work/logs/daemon.jsonl"\nmax_mb = 0.002'))
    export = config.parent / "exports" / "annotations.jsonl"
    with DaemonProcess(config) as daemon:
        subprocess.run(["rm", "-rf", str(config.parent / "work" / "logs")], check=True)
        for item in items:
            append_records(export, records_for([item]))
            time.sleep(0.4)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (daemon.log_path.exists()
                                                   and "ingested" in daemon.log_path.read_text()):
            time.sleep(0.2)
        assert daemon.alive(), (config.parent / "daemon.stderr").read_text()[-3000:]
        assert "ingested" in daemon.log_path.read_text()  # the folder and the file are back, with new lines
        assert daemon.terminate() == 0


def _status(workspace: Path) -> dict:
    out = odal_cli("status", "--workspace", str(workspace), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_full_work_dir_during_ingest_is_a_degraded_state_and_nothing_is_lost_once_there_is_room(tmp_path):
    """Defect: ``database or disk is full`` during ingest made the daemon exit."""
    items = datasets.generate_shapes(tmp_path / "images", 8, seed=4)
    config = make_workspace(tmp_path / "ws", items, min_new=1000)
    export = config.parent / "exports" / "annotations.jsonl"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # what systemd listens on
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    with tmpfs(config.parent / "work", "16m") as work, DaemonProcess(config, env) as daemon, notify:
        append_records(export, records_for(items[:2]))
        _wait(lambda: _status(config.parent)["annotations"]["accepted"] == 2, 30, "the first two annotations")
        filler = fill(work)
        append_records(export, records_for(items[2:]))
        status = _wait(lambda: (s := _status(config.parent))["now"].get("degraded") and s, 30, "degraded")
        assert "database or disk is full" in status["now"]["degraded"]["reason"]
        assert status["now"]["text"].startswith("degraded: ") and "retrying in" in status["now"]["text"]
        sent = []
        with contextlib.suppress(BlockingIOError):
            while True:
                sent.append(notify.recv(4096).decode())
        assert any(m.startswith("STATUS=degraded: handling ExportChanged") and "disk is full" in m for m in sent)
        time.sleep(3)  # retried with backoff meanwhile, still up, nothing ingested
        assert daemon.alive() and _status(config.parent)["annotations"]["accepted"] == 2
        filler.unlink()
        status = _wait(lambda: (s := _status(config.parent))["annotations"]["accepted"] == 8
                       and not s["now"].get("degraded") and s, 90, "the rest after room came back")
        assert status["now"]["text"] == "idle" and status["annotations"]["invalid"] == 0
        stderr = (config.parent / "daemon.stderr").read_text()
        assert '"event": "degraded"' in stderr and '"event": "degraded_recovered"' in stderr
        assert daemon.terminate() == 0


def _worker_child(parent: int) -> int | None:
    for task in os.listdir(f"/proc/{parent}/task"):
        for child in Path(f"/proc/{parent}/task/{task}/children").read_text().split():
            with contextlib.suppress(OSError):
                if b"odal.daemon.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    return None


def test_a_round_whose_worker_dies_on_a_full_disk_is_recorded_failed_with_its_error_once_there_is_room(tmp_path):
    """Defect: the failure could not be written to the full disk, so the round stayed "running", error lost."""
    items = datasets.generate_shapes(tmp_path / "images", 2, seed=6)
    config = make_workspace(tmp_path / "ws", items)
    with tmpfs(config.parent / "work", "16m") as work:
        cfg = load(config)
        history = History(cfg.ledger_path)
        worker = Worker(work / "logs" / "worker.log")
        accepted = [{"input_hash": str(n), "image_path": str(item.image.resolve()), "boxes": []}
                    for n, item in enumerate(items)]
        statuses: list[str] = []
        outcome: list = []
        thread = threading.Thread(target=lambda: outcome.append(run_round(
            cfg, history, accepted, 1, ["square", "disc"], worker, statuses.append)), daemon=True)
        thread.start()
        try:
            child = _wait(lambda: _worker_child(os.getpid()), 60, "the worker child")
            filler = fill(work)
            os.kill(child, signal.SIGKILL)  # the worker dies while the disk is full
            _wait(lambda: any(s.startswith("degraded: round 1 failed") for s in statuses), 30, "degraded status")
            reader = History(cfg.ledger_path, readonly=True)
            assert reader.rounds()[0]["state"] == "running"  # not recordable yet: no room
            filler.unlink()
            thread.join(30)
            assert not thread.is_alive() and outcome and outcome[0].state == "failed"
            (row,) = reader.rounds()
            reader.close()
            assert row["state"] == "failed" and "RoundFailed: the worker" in row["error"]
        finally:
            worker.stop()
            thread.join(10)
            history.close()
