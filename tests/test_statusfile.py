"""The status file says what the daemon does now, written atomically at most once a second."""

from __future__ import annotations

import os

from odal.daemon.store import statusfile


def test_a_status_is_written_now_then_rate_limited_and_flushed_later(tmp_path):
    status = statusfile.StatusFile(tmp_path, min_interval=0.2)
    status.set("round 1: records")
    assert statusfile.read(tmp_path)["text"] == "round 1: records"
    status.set("round 1: training 1/10")
    assert statusfile.read(tmp_path)["text"] == "round 1: records"  # held back
    status.flush()
    assert statusfile.read(tmp_path)["text"] == "round 1: records"
    import time

    time.sleep(0.25)
    status.flush()
    record = statusfile.read(tmp_path)
    assert record["text"] == "round 1: training 1/10" and record["pid"] == os.getpid() and record["running"]


def test_a_status_of_a_gone_process_reads_as_not_running_and_no_file_reads_as_none(tmp_path):
    assert statusfile.read(tmp_path) is None
    (tmp_path / statusfile.FILE_NAME).write_text('{"text": "idle", "since": 0, "pid": 999999999}')
    assert statusfile.read(tmp_path)["running"] is False


def test_temp_files_left_by_a_crash_are_removed_at_start(tmp_path):
    (tmp_path / ".status.json.abc.tmp").write_text("half")
    statusfile.StatusFile(tmp_path)
    assert not list(tmp_path.glob(".status.json.*"))
