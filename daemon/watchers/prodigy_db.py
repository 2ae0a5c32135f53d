"""Watch Prodigy's SQLite database: its file, ``-wal`` and ``-journal`` changes become :class:`ProdigyDbChanged`."""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from odal.daemon.watchers.events import ProdigyDbChanged


class ProdigyDbWatcher(FileSystemEventHandler):
    def __init__(self, database: Path, events: queue.Queue):
        self.folder = database.parent
        self._database = database
        self._names = {database.name, database.name + "-wal", database.name + "-journal"}
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and Path(path).name in self._names:
                self._events.put(ProdigyDbChanged(str(self._database)))
                return
