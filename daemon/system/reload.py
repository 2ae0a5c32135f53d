"""What a SIGHUP reload applies, and what waits for a restart.

The keys below are held by components made once at start (the watchers watch the export and data folders, the
ledger, lock and queue live in the work dir, the scorer and the metrics endpoint hold their addresses, the log
and the worker child their settings).  A reload keeps them at their running values, so that every component goes
on agreeing, and names the changed ones (``config_needs_restart``); every other key applies from the next event or
round on.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from odal.daemon.config import Config

RESTART_ONLY = {  # Config field -> odal.toml key
    "export_dir": "prodigy.export_dir", "prodigy_db": "prodigy.database", "prodigy_dataset": "prodigy.dataset",
    "data_dir": "paths.data_dir", "work_dir": "paths.work_dir", "serving_address": "serving.address",
    "metrics_address": "metrics.address", "log_file": "log.file", "log_level": "log.level",
    "log_max_bytes": "log.max_mb", "log_backups": "log.backups", "worker_max_bytes": "training.worker_max_mb",
}


def merge(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """``loaded`` with the restart-only keys kept at their ``running`` values, and the keys that changed there."""
    waiting = [key for name, key in RESTART_ONLY.items() if getattr(running, name) != getattr(loaded, name)]
    return dataclasses.replace(loaded, **{name: getattr(running, name) for name in RESTART_ONLY}), waiting
