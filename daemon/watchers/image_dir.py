"""Watch the image data folder (recursively): image files created, changed or deleted become :class:`ImageChanged`."""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from odal.daemon.watchers.events import ImageChanged

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageDirWatcher(FileSystemEventHandler):
    def __init__(self, folder: Path, events: queue.Queue):
        self.folder = folder
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write", "modified"):
            return  # "modified" fires per write; "closed" (written and closed) is the end of a write
        if event.event_type in ("deleted", "moved"):
            if Path(event.src_path).suffix.lower() in IMAGE_SUFFIXES:
                self._events.put(ImageChanged(str(event.src_path), deleted=True))
        dest = getattr(event, "dest_path", "") if event.event_type == "moved" else event.src_path
        if event.event_type != "deleted" and dest and Path(dest).suffix.lower() in IMAGE_SUFFIXES:
            if not Path(dest).name.startswith("."):
                self._events.put(ImageChanged(str(dest)))
