"""The daemon's log file: whole JSON lines, rotated by size so that weeks of running keep a bounded amount."""

from __future__ import annotations

import json
import subprocess
import sys

from odal.daemon.system import log as logs
from odal.daemon.commands.logs import follow


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_file_is_rotated_before_it_passes_the_limit_keeping_whole_lines_and_the_newest_backups(tmp_path):
    path = tmp_path / "daemon.jsonl"
    out = logs.RotatingFile(path, max_bytes=100, backups=2)
    for n in range(60):
        out.write(json.dumps({"n": n}) + "\n")  # 9 or 10 bytes each: more than three files hold
    out.close()
    files = [path, path.with_name("daemon.jsonl.1"), path.with_name("daemon.jsonl.2")]
    assert not path.with_name("daemon.jsonl.3").exists()
    assert all(f.stat().st_size <= 100 for f in files)
    numbers = [json.loads(line)["n"] for f in reversed(files) for line in _lines(f)]
    assert numbers == list(range(numbers[0], 60)) and numbers[0] > 0  # in order, newest kept, oldest dropped


def test_without_a_limit_the_file_only_grows(tmp_path):
    path = tmp_path / "daemon.jsonl"
    out = logs.RotatingFile(path, max_bytes=0)
    for n in range(200):
        out.write(f"{n}\n")
    out.close()
    assert len(_lines(path)) == 200 and list(tmp_path.iterdir()) == [path]


def test_a_line_longer_than_the_limit_is_written_whole(tmp_path):
    path = tmp_path / "daemon.jsonl"
    out = logs.RotatingFile(path, max_bytes=10, backups=1)
    out.write("short\n")
    out.write("x" * 50 + "\n")
    out.close()
    assert _lines(path) == ["x" * 50] and _lines(path.with_name("daemon.jsonl.1")) == ["short"]


def test_a_follower_sees_every_line_across_rotations(tmp_path):
    path = tmp_path / "daemon.jsonl"
    out = logs.RotatingFile(path, max_bytes=60, backups=5)
    out.write("0\n")
    seen = []
    reader = follow(path, poll=0.01)
    seen.append(next(reader))
    for n in range(1, 40):
        out.write(f"{n:08d}\n")
        if n % 5 == 0:  # the follower reads now and then, as `odal logs -f` does
            while len(seen) < n:
                seen.append(next(reader))
    while len(seen) < 40:
        seen.append(next(reader))
    out.close()
    assert [int(line) for line in seen] == list(range(40))


def test_a_configured_process_writes_json_lines_to_the_rotating_file(tmp_path):
    path = tmp_path / "logs" / "daemon.jsonl"
    code = ("import sys; from pathlib import Path; from odal.daemon.system import log\n"
            f"log.configure('info', Path({str(path)!r}), stream=open('/dev/null', 'w'), max_bytes=400, backups=1)\n"
            "for n in range(40): log.get('odal.test').info('tick', n=n)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    newest = [json.loads(line) for line in _lines(path)]
    older = [json.loads(line) for line in _lines(path.with_name("daemon.jsonl.1"))]
    assert newest[-1]["n"] == 39 and newest[-1]["event"] == "tick" and newest[-1]["logger"] == "odal.test"
    assert [e["n"] for e in older + newest] == list(range(older[0]["n"], 40))
    assert path.stat().st_size <= 400


_ONE_STYLE = """
import json, logging, sys
from odal.daemon.system import log as logs
from odal.daemon.system import lock  # binds its logger at import, before configure
early = logs.get("odal.early")
logs.configure("info")
early.info("early_event", n=1)
logging.getLogger("odal.daemon.system.lock").info("took over %s from a daemon that is gone", "/w")
logging.getLogger("some.library").warning("a library speaks")
"""


def test_every_line_is_json_with_its_logger_also_stdlib_records_and_loggers_made_before_configure():
    proc = subprocess.run([sys.executable, "-c", _ONE_STYLE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # nothing as plain text on stdout
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(e["logger"], e["event"], e["level"]) for e in lines] == [
        ("odal.early", "early_event", "info"),
        ("odal.daemon.system.lock", "took over /w from a daemon that is gone", "info"),
        ("some.library", "a library speaks", "warning"),
    ]
    assert all("timestamp" in e for e in lines)
