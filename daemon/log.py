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
    """

    def __init__(self, path: Path, max_bytes: int = 0, backups: int = 3) -> None:
        self.path, self.max_bytes, self.backups = Path(path), max_bytes, backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, text: str) -> None:
        size = self._handle.tell() if self.max_bytes else 0
        if size and size + len(text.encode()) > self.max_bytes:
            self._handle.close()
            rotate(self.path, self.backups)
            self._handle = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._handle.write(text)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class _LineWriter:
    """A structlog logger that writes each rendered line to several streams, whole lines under one lock."""

    _lock = threading.Lock()

    def __init__(self, streams: list[TextIO]):
        self._streams = streams

    def msg(self, message: str) -> None:
        with self._lock:
            for stream in self._streams:
                stream.write(message + "\n")
                stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(level: str = "info", file: Path | None = None, stream: TextIO | None = None, max_bytes: int = 0,
              backups: int = 3) -> None:
    """Set up structlog for this process (the daemon, the CLI and the demo call this once at start)."""
    streams = [stream or sys.stderr]
    if file is not None:
        streams.append(RotatingFile(file, max_bytes, backups))  # lives as long as the process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: _LineWriter(streams),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name).bind(logger=name)
