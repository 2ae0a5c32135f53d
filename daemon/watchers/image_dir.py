"""Watch the image data folder (recursively): image files created, changed or deleted become :class:`ImageChanged`."""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from odal.common.images import has_image_suffix, is_image_name
from odal.daemon.watchers.events import ImageChanged


class ImageDirWatcher(FileSystemEventHandler):
    def __init__(self, folder: Path, events: queue.Queue):
        self.folder = folder
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write", "modified"):
            return  # "modified" fires per write; "closed" (written and closed) is the end of a write
        if event.event_type in ("deleted", "moved"):
            if has_image_suffix(Path(event.src_path).name):
                self._events.put(ImageChanged(str(event.src_path), deleted=True))
        dest = getattr(event, "dest_path", "") if event.event_type == "moved" else event.src_path
        if event.event_type != "deleted" and dest and is_image_name(Path(dest).name):
            self._events.put(ImageChanged(str(dest)))


class SettleRechecks:
    """Each image event is looked at once more when the file has settled (``delay`` seconds later, the limits'
    ``settle_seconds`` plus a margin): a file that was broken while it was being copied is then either good, or
    complete and broken, and a line waiting for it is ingested or set aside for good instead of waiting forever.
    The loop calls :meth:`seen` with the events it handled and :meth:`due` for the rechecks to handle now."""

    def __init__(self, delay: float, clock=None) -> None:
        import time

        self.delay = delay
        self._clock = clock or time.monotonic
        self._due: dict[str, float] = {}

    def seen(self, events) -> None:
        for event in events:
            if isinstance(event, ImageChanged) and not event.deleted:
                self._due[event.path] = self._clock() + self.delay

    def due(self) -> list[ImageChanged]:
        now = self._clock()
        ready = [path for path, at in self._due.items() if at <= now]
        for path in ready:
            del self._due[path]
        return [ImageChanged(path) for path in ready]
