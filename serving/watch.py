"""Wake the model manager when a base path changes (inotify through watchdog), instead of waiting for its poll.

TF Serving finds new versions by polling each base path (``--file_system_poll_wait_seconds``, 1 s); a version
published just after a poll waits for the next, and then for its load.  ``odal serve`` keeps the poll (it is the
ground truth, and covers file systems without inotify) and also watches each base path itself, not recursively:
a version folder renamed in (odal's publish), created, or removed wakes the manager at once.  The watcher only
wakes; the manager's next poll decides what changed (watchdog's rule: observing never does work).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def on_any_event(self, event) -> None:
        if event.is_directory or event.event_type in ("moved", "deleted"):
            self._wake()


class BasePathWatcher:
    """Watches a set of base paths; ``update`` changes the set (after a config reload); ``stop`` ends it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._handler = _Wake(wake)
        self._observer = Observer()
        self._observer.daemon = True
        self._watches: dict[str, object] = {}
        self._observer.start()

    def update(self, base_paths: Iterable[str]) -> None:
        wanted = {os.path.abspath(path) for path in base_paths}
        for path in set(self._watches) - wanted:
            self._observer.unschedule(self._watches.pop(path))
        for path in wanted - set(self._watches):
            if not os.path.isdir(path):  # not there yet: the poll finds it (and a later update watches it)
                continue
            try:
                self._watches[path] = self._observer.schedule(self._handler, path, recursive=False)
            except OSError as error:  # inotify watch limit, permissions: the poll still works
                log.warning("not watching %s (%s); new versions are found by polling", path, error)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(10)
