"""What the daemon is doing now, in ``<work_dir>/status.json``, for ``odal status`` (another process) to show.

The daemon calls :meth:`StatusFile.set` on every status change (many per second while training); the file is
rewritten atomically at most once per ``min_interval`` seconds, and a change that arrives sooner is written on
the next call or by :meth:`flush`.  The record holds the text, when it was set, and the daemon's pid, so a reader
can tell a stale file (daemon gone) from a live one, and ``degraded`` (None, or what is failing and since when:
a full disk, ...) set by :meth:`StatusFile.set_degraded`.

The file is padded to :data:`SIZE` bytes: when the atomic write fails (the work dir's disk is full, no room for a
temp file), the record is written over the old one in place, in blocks the file already owns, so that
``odal status`` can still say the daemon is degraded and why.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from odal.daemon.system.atomic import atomic_write_text

FILE_NAME = "status.json"
SIZE = 4096


class StatusFile:
    def __init__(self, work_dir: Path, min_interval: float = 1.0):
        self.path = Path(work_dir) / FILE_NAME
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._written_at = 0.0
        self._pending: dict | None = None
        self._text = ""
        self._detail: dict | None = None
        self._degraded: dict | None = None
        for stale in self.path.parent.glob(f".{FILE_NAME}.*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)

    def set(self, text: str, detail: dict | None = None) -> None:
        """Record ``text`` (and ``detail``: a round's stage, step, loss, ETA) as the current status; writes now
        unless the last write was under a second ago."""
        with self._lock:
            self._text, self._detail = text, detail
            self._pending = {"text": text, "since": time.time(), "pid": os.getpid(), "degraded": self._degraded,
                             "detail": detail}
            if time.monotonic() - self._written_at >= self.min_interval:
                self._write_locked()

    def set_degraded(self, reason: str | None) -> None:
        """Record that something keeps failing (``reason``), or that it works again (None); written now."""
        with self._lock:
            if reason is None:
                self._degraded = None
            elif self._degraded is None or self._degraded["reason"] != reason:
                self._degraded = {"reason": reason[:1000], "since": time.time()}
            self._pending = {"text": self._text, "since": time.time(), "pid": os.getpid(),
                             "degraded": self._degraded, "detail": self._detail}
            self._write_locked()

    def flush(self) -> None:
        """Write a status held back by the rate limit (the daemon's loop calls this on each tick)."""
        with self._lock:
            if self._pending is not None and time.monotonic() - self._written_at >= self.min_interval:
                self._write_locked()

    def _write_locked(self) -> None:
        record, self._pending = self._pending, None
        text = json.dumps(record)
        if len(text) >= SIZE:
            text = json.dumps(dict(record, text=record["text"][:500]))
        if len(text) >= SIZE:  # a detail too big for the record: the text and the rest still fit
            text = json.dumps(dict(record, text=record["text"][:500], detail=None))[:SIZE - 1]
        text = text.ljust(SIZE - 1) + "\n"
        try:
            atomic_write_text(self.path, text)
        except OSError:  # a full disk must not stop the daemon: write over the old record, in place
            if not self._overwrite(text.encode()):
                self._pending = record
        self._written_at = time.monotonic()

    def _overwrite(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.fstat(fd).st_size >= len(data) and os.pwrite(fd, data, 0) == len(data)
        except OSError:
            return False
        finally:
            os.close(fd)


def read(work_dir: Path) -> dict | None:
    """The last recorded status, with ``running`` False when the pid that wrote it is gone; None if none."""
    try:
        record = json.loads((Path(work_dir) / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    record["running"] = bool(pid) and Path(f"/proc/{pid}").exists()
    return record
