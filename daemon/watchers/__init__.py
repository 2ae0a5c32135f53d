"""Watchers observe the filesystem (watchdog, inotify on Linux) and only queue event values; they do no work."""

from __future__ import annotations

import queue

from watchdog.observers import Observer

from odal.daemon.config import Config
from odal.daemon.watchers.export_dir import ExportDirWatcher
from odal.daemon.watchers.image_dir import ImageDirWatcher
from odal.daemon.watchers.prodigy_db import ProdigyDbWatcher


def start(cfg: Config, events: queue.Queue) -> Observer:
    """Start one observer thread with a watch per configured source; the caller stops and joins it."""
    observer = Observer()
    if cfg.export_dir is not None:
        cfg.export_dir.mkdir(parents=True, exist_ok=True)
        observer.schedule(ExportDirWatcher(cfg.export_dir, events), str(cfg.export_dir), recursive=False)
    if cfg.prodigy_db is not None:
        watcher = ProdigyDbWatcher(cfg.prodigy_db, events)
        observer.schedule(watcher, str(watcher.folder), recursive=False)
    observer.schedule(ImageDirWatcher(cfg.data_dir, events), str(cfg.data_dir), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
