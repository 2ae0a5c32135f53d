"""``odal logs`` turns JSON log lines into one readable line each, follows rotation and truncation, reads pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from odal.daemon.commands import logs as logview

LINE = json.dumps({"logger": "odal.round", "round": 3, "stage": "train", "note": "two words", "event": "stage_started",
                   "level": "info", "timestamp": "2026-11-24T01:29:07.171628Z"})


def test_a_log_line_becomes_time_level_event_and_key_values():
    assert logview.format_line(LINE) == ('2026-11-24 01:29:07.171  info    stage_started        round=3 stage=train '
                                         'note="two words"')


def test_lines_that_are_not_json_events_are_shown_as_they_are():
    assert logview.format_line("Traceback (most recent call last):") == "Traceback (most recent call last):"
    assert logview.format_line('{"no": "event"}') == '{"no": "event"}'


def test_an_exception_field_is_printed_below_its_event():
    line = json.dumps({"event": "event_failed", "level": "error", "timestamp": "t", "exception": "Trace\nValueError"})
    assert logview.format_line(line).endswith("\nTrace\nValueError")


def test_follow_reads_appends_then_a_rotated_file_then_a_truncated_one(tmp_path):
    path = tmp_path / "daemon.jsonl"
    path.write_text("a\n")
    got, stop = [], threading.Event()

    def reader():
        for line in logview.follow(path, poll=0.01, stop=stop.is_set):
            got.append(line)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        def wait(n):
            deadline = time.monotonic() + 5
            while len(got) < n and time.monotonic() < deadline:
                time.sleep(0.01)

        with open(path, "a") as out:
            out.write("b\npart")
        wait(2)
        with open(path, "a") as out:
            out.write("ial\n")
        wait(3)
        os.rename(path, tmp_path / "daemon.jsonl.1")  # rotation: a new file appears
        path.write_text("c\n")
        wait(4)
        with open(path, "r+") as out:  # truncation in place (copytruncate)
            out.truncate(0)
        time.sleep(0.1)
        with open(path, "a") as out:
            out.write("d\n")
        wait(5)
    finally:
        stop.set()
        thread.join(5)
    assert got == ["a", "b", "partial", "c", "d"]


def test_piped_stdin_is_pretty_printed_by_the_cli(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import sys; from odal.daemon.cli import main; sys.exit(main())",
                             "logs", "--workspace", str(tmp_path)], input=LINE + "\n", capture_output=True, text=True)
    assert result.returncode == 0 and "stage_started        round=3" in result.stdout, result.stderr
    raw = subprocess.run([sys.executable, "-c", "import sys; from odal.daemon.cli import main; sys.exit(main())",
                          "logs", "--raw"], input=LINE + "\n", capture_output=True, text=True)
    assert raw.stdout == LINE + "\n"
