"""Structured logs: one JSON object per line on stderr (journald keeps it) and, if configured, in a file.

Every event has ``timestamp``, ``level``, ``logger`` and ``event``; stages bind context such as ``round``.
``odal logs`` pretty-prints these lines; ``journalctl -u odal-daemon -f`` and ``tail -f`` read them as they are.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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


def configure(level: str = "info", file: Path | None = None, stream: TextIO | None = None) -> None:
    """Set up structlog for this process (the daemon, the CLI and the demo call this once at start)."""
    streams = [stream or sys.stderr]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        streams.append(open(file, "a", encoding="utf-8", buffering=1))  # noqa: SIM115 - lives as long as the process
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
