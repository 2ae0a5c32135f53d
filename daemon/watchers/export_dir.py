"""Watch the Prodigy export folder: every change to an export file (``*.jsonl``, ``*.json`` lines; not hidden)
becomes an :class:`ExportChanged`; :func:`export_files` lists them for a full read (the same rule)."""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from odal.daemon.watchers.events import ExportChanged

SUFFIXES = (".jsonl", ".json")


def is_export_name(name: str) -> bool:
    return Path(name).suffix in SUFFIXES and not name.startswith(".")


def export_files(folder: Path) -> list[Path]:
    """The export files of ``folder``, sorted by name (what the daemon reads at start, on reload and on retry)."""
    return [path for path in sorted(Path(folder).iterdir()) if is_export_name(path.name)]


class ExportDirWatcher(FileSystemEventHandler):
    def __init__(self, folder: Path, events: queue.Queue):
        self.folder = folder
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and is_export_name(Path(path).name):
                self._events.put(ExportChanged(str(path)))
