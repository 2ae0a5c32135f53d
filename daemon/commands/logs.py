"""``odal logs``: the daemon's JSON log lines, one readable line per event.

    2026-11-24 01:29:03.271  info   round_started      round=1 accepted=8 train=7 eval=1 steps=10

Reads the workspace's ``[log] file`` (or stdin when piped: ``journalctl -u odal-daemon -o cat | odal logs``).
``follow`` keeps reading as the daemon appends, and starts again from the top when the file is rotated (another
inode) or truncated.  Lines that are not JSON (a traceback, a line cut by a crash) are shown as they are.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import IO, Iterable, Iterator

_SKIP = ("timestamp", "level", "event", "logger", "log_level")
_COLOURS = {"debug": "\033[2m", "info": "", "warning": "\033[33m", "error": "\033[31m", "critical": "\033[31;1m"}


def _value(value: object) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) and '"' not in value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def format_line(line: str, colour: bool = False) -> str:
    """One log line made readable: time, level, event, then key=value in the order logged."""
    line = line.rstrip("\n")
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or "event" not in record:
        return line
    stamp = str(record.get("timestamp", ""))
    stamp = stamp.replace("T", " ").rstrip("Z")[:23]
    level = str(record.get("level") or record.get("log_level") or "")
    fields = " ".join(f"{k}={_value(v)}" for k, v in record.items() if k not in _SKIP and k != "exception")
    text = f"{stamp:<23}  {level:<7} {record['event']:<20} {fields}".rstrip()
    if record.get("exception"):
        text += "\n" + str(record["exception"]).rstrip()
    if colour and _COLOURS.get(level):
        text = f"{_COLOURS[level]}{text}\033[0m"
    return text


def follow(path: Path, poll: float = 0.25, from_start: bool = True, stop=lambda: False) -> Iterator[str]:
    """Lines of ``path`` as they are appended; reopens it after rotation (new inode) or truncation."""
    handle: IO[bytes] | None = None
    inode = None
    partial = b""
    while not stop():
        if handle is None:
            try:
                handle = open(path, "rb")
            except FileNotFoundError:
                time.sleep(poll)
                continue
            inode = os.fstat(handle.fileno()).st_ino
            if not from_start:
                handle.seek(0, os.SEEK_END)
            from_start = True  # a file that appears later (rotation) is read from its start
        chunk = handle.read()
        if chunk:
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            for raw in lines:
                yield raw.decode("utf-8", "replace")
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is None or st.st_ino != inode:  # rotated: finish the old file, then open the new one
            handle.close()
            handle, partial = None, b""
            continue
        if st.st_size < handle.tell():  # truncated in place
            handle.seek(0)
            partial = b""
            continue
        time.sleep(poll)
    if handle is not None:
        handle.close()


def show(lines: Iterable[str], out: IO[str], raw: bool = False, colour: bool = False) -> None:
    for line in lines:
        if not line.strip():
            continue
        out.write((line.rstrip("\n") if raw else format_line(line, colour)) + "\n")
        out.flush()


def stdin_is_piped(stdin: IO | None = None) -> bool:
    """True when stdin is a pipe or a file (``journalctl ... | odal logs``), not a terminal or /dev/null."""
    stdin = stdin or sys.stdin
    try:
        mode = os.fstat(stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def run(log_file: Path | None, follow_file: bool, raw: bool, stdin: IO[str] | None = None,
        out: IO[str] | None = None) -> int:
    """The ``odal logs`` command: ``stdin`` (when given) or the log file, once or followed."""
    out = out or sys.stdout
    colour = out.isatty() and not raw
    try:
        if stdin is not None:
            show(stdin, out, raw, colour)
            return 0
        if log_file is None:
            print("odal logs: the workspace has no [log] file; pipe the journal instead: "
                  "journalctl -u odal-daemon -o cat | odal logs", file=sys.stderr)
            return 1
        if follow_file:
            show(follow(log_file), out, raw, colour)
        else:
            with open(log_file, encoding="utf-8", errors="replace") as handle:
                show(handle, out, raw, colour)
    except FileNotFoundError:
        print(f"odal logs: {log_file} does not exist (yet)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0
