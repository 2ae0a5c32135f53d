"""Structured logs: one JSON object per line on stderr (journald keeps it) and, if configured, in a file.

Every event has ``timestamp``, ``level``, ``logger`` and ``event``; stages bind context such as ``round``.
``odal logs`` pretty-prints these lines; ``journalctl -u odal-daemon -f`` and ``tail -f`` read them as they are.
The file is rotated by size (``daemon.jsonl`` -> ``daemon.jsonl.1`` -> ... ``.N``, oldest dropped), so a daemon left
running for weeks keeps a bounded amount of log; ``odal logs -f`` and ``tail -F`` follow across a rotation.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def rotate(path: Path, backups: int) -> None:
    """``path`` -> ``path.1`` -> ... -> ``path.<backups>`` (the oldest is replaced); ``backups`` 0 just removes it."""
    path = Path(path)
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    if backups > 0:
        if path.exists():
            os.replace(path, path.with_name(f"{path.name}.1"))
    else:
        path.unlink(missing_ok=True)


class RotatingFile:
    """An append-only text file that is rotated (:func:`rotate`) before a write would take it past ``max_bytes``.

    ``max_bytes`` 0: never rotated.  Each ``write`` is expected to be one whole line (never split across files).
    Never raises: a log folder removed while running is made again (checked at most once a ``check_every``
    seconds, and at each rotation); a line that cannot be written (a full disk) is dropped from the file (it still
    reaches stderr) and the file is tried again after ``retry_after`` seconds.  ``failures`` counts dropped lines.
    """

    def __init__(self, path: Path, max_bytes: int = 0, backups: int = 3, check_every: float = 1.0,
                 retry_after: float = 5.0) -> None:
        self.path, self.max_bytes, self.backups = Path(path), max_bytes, backups
        self.check_every, self.retry_after = check_every, retry_after
        self.failures = 0
        self._handle: TextIO | None = None
        self._checked = 0.0
        self._retry_at = 0.0
        self._open()
        if self._handle is None:
            raise OSError(f"cannot open the log file {self.path}")

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError:
            self._handle = None
            self._retry_at = time.monotonic() + self.retry_after
        self._checked = time.monotonic()

    def _close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass

    def _gone(self) -> bool:
        """The open file was unlinked (its folder removed, or deleted by hand): lines would go nowhere."""
        try:
            return os.fstat(self._handle.fileno()).st_nlink == 0
        except (OSError, ValueError):
            return True

    def write(self, text: str) -> None:
        now = time.monotonic()
        if self._handle is None:
            if now < self._retry_at:
                self.failures += 1
                return
            self._open()
        elif now - self._checked >= self.check_every:
            self._checked = now
            if self._gone():
                self._close()
                self._open()
        if self._handle is None:
            self.failures += 1
            return
        try:
            size = self._handle.tell() if self.max_bytes else 0
            if size and size + len(text.encode()) > self.max_bytes:
                self._close()
                try:
                    rotate(self.path, self.backups)
                except OSError:
                    pass  # the folder went away: the file is made again below
                self._open()
                if self._handle is None:
                    self.failures += 1
                    return
            self._handle.write(text)
        except (OSError, ValueError):  # ENOSPC, EIO, a closed file: drop this line, try again later
            self.failures += 1
            self._close()
            self._retry_at = now + self.retry_after

    def flush(self) -> None:
        if self._handle is not None:
            try:
                self._handle.flush()
            except OSError:
                pass

    def close(self) -> None:
        self._close()


class _LineWriter:
    """A structlog logger that writes each rendered line to several streams, whole lines under one lock."""

    _lock = threading.Lock()

    def __init__(self, streams: list[TextIO], name: str | None = None):
        self._streams = streams
        self.name = name

    def msg(self, message: str) -> None:
        with self._lock:
            for stream in self._streams:
                try:  # one stream failing (a closed stderr, a full disk) never stops the caller or the others
                    stream.write(message + "\n")
                    stream.flush()
                except (OSError, ValueError):
                    pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(level: str = "info", file: Path | None = None, stream: TextIO | None = None, max_bytes: int = 0,
              backups: int = 3) -> None:
    """Set up structlog for this process (the daemon, the CLI and the demo call this once at start)."""
    streams = [stream or sys.stderr]
    if file is not None:
        streams.append(RotatingFile(file, max_bytes, backups))  # lives as long as the process
    structlog.configure(
        processors=[
            _logger_name,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: _LineWriter(streams, str(args[0]) if args else None),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(handlers=[_Stdlib()], level=_LEVELS[level], force=True)


class _Stdlib(logging.Handler):
    """Routes stdlib ``logging`` records (the lock, sd_notify, libraries) through structlog: the same JSON lines,
    with ``logger`` the record's logger name and ``event`` its message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower() if record.levelname.lower() in _LEVELS else "error"
            fields = {"exc_info": record.exc_info} if record.exc_info else {}
            getattr(get(record.name), level)(record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - logging never raises into the caller
            self.handleError(record)


def get(name: str):
    """The logger ``name``: resolved at each use (a module imported before :func:`configure` logs JSON too), each
    event carrying ``logger`` (also from ``structlog.get_logger(name)``)."""
    return structlog.get_logger(name)


def _logger_name(logger, _method: str, event_dict: dict) -> dict:
    """The processor that puts ``logger`` (the name the logger was asked for) first in every event."""
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        return {"logger": name, **event_dict}
    return event_dict
