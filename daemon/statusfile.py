"""What the daemon is doing now, in ``<work_dir>/status.json``, for ``odal status`` (another process) to show.

The daemon calls :meth:`StatusFile.set` on every status change (many per second while training); the file is
rewritten atomically at most once per ``min_interval`` seconds, and a change that arrives sooner is written on
the next call or by :meth:`flush`.  The record holds the text, when it was set, and the daemon's pid, so a reader
can tell a stale file (daemon gone) from a live one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from odal.daemon.atomic import atomic_write_text

FILE_NAME = "status.json"


class StatusFile:
    def __init__(self, work_dir: Path, min_interval: float = 1.0):
        self.path = Path(work_dir) / FILE_NAME
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._written_at = 0.0
        self._pending: dict | None = None
        for stale in self.path.parent.glob(f".{FILE_NAME}.*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)

    def set(self, text: str) -> None:
        """Record ``text`` as the current status; writes now unless the last write was under a second ago."""
        record = {"text": text, "since": time.time(), "pid": os.getpid()}
        with self._lock:
            self._pending = record
            if time.monotonic() - self._written_at >= self.min_interval:
                self._write_locked()

    def flush(self) -> None:
        """Write a status held back by the rate limit (the daemon's loop calls this on each tick)."""
        with self._lock:
            if self._pending is not None and time.monotonic() - self._written_at >= self.min_interval:
                self._write_locked()

    def _write_locked(self) -> None:
        record, self._pending = self._pending, None
        try:
            atomic_write_text(self.path, json.dumps(record))
        except OSError:  # a full disk must not stop the daemon; status is a courtesy
            self._pending = record
        self._written_at = time.monotonic()


def read(work_dir: Path) -> dict | None:
    """The last recorded status, with ``running`` False when the pid that wrote it is gone; None if none."""
    try:
        record = json.loads((Path(work_dir) / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    record["running"] = bool(pid) and Path(f"/proc/{pid}").exists()
    return record
