"""Watch the Prodigy export folder: every change to a ``*.jsonl`` file becomes an :class:`ExportChanged`."""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from odal.daemon.watchers.events import ExportChanged

SUFFIXES = (".jsonl", ".json")


class ExportDirWatcher(FileSystemEventHandler):
    def __init__(self, folder: Path, events: queue.Queue):
        self.folder = folder
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and Path(path).suffix in SUFFIXES and not Path(path).name.startswith("."):
                self._events.put(ExportChanged(str(path)))
