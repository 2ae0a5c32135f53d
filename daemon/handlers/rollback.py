"""``odal rollback``: take a bad model version out of serving, safely, so TF Serving falls back to the previous one.

The version folder is moved in one rename to ``<work_dir>/quarantine/<version>-<time>`` (kept for inspection, never
deleted by odal).  It must be on the same filesystem as the base path: a copy would make the version half-present
while it runs, so another filesystem is refused.  The history records the version as ``rolled_back``; because
``publish.next_version`` counts every version ever recorded, later versions still get higher numbers.  The last
remaining version is only removed with ``force`` (TF Serving would then serve nothing).

Safe next to a running daemon: the rename is atomic, and the daemon's retention only deletes numbered folders
that are still there.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from odal.daemon import log as logs
from odal.daemon.atomic import fsync_dir
from odal.daemon.config import Config
from odal.daemon.errors import OdalError
from odal.daemon.handlers.publish import version_dirs
from odal.daemon.history import History

log = logs.get("odal.rollback")


class RollbackError(OdalError):
    """The version cannot be taken out of serving (missing, the last one without --force, other filesystem)."""


def quarantine_dir(cfg: Config) -> Path:
    return cfg.work_dir / "quarantine"


def rollback(cfg: Config, version: int | None = None, force: bool = False, now: float | None = None) -> dict:
    """Move ``version`` (default: the newest) out of the base path; returns {version, moved_to, serving}."""
    versions = version_dirs(cfg.base_path)
    if not versions:
        raise RollbackError(f"no version to roll back: {cfg.base_path} holds no numbered version folder")
    version = max(versions) if version is None else version
    if version not in versions:
        raise RollbackError(f"version {version} is not in {cfg.base_path} (present: "
                            f"{', '.join(map(str, sorted(versions)))})")
    remaining = sorted(v for v in versions if v != version)
    if not remaining and not force:
        raise RollbackError(f"version {version} is the only version in {cfg.base_path}; removing it leaves TF "
                            f"Serving nothing to serve (use --force to do it anyway)")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    target = quarantine_dir(cfg) / f"{version}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(target.parent).st_dev != os.stat(cfg.base_path).st_dev:
        raise RollbackError(f"{target.parent} is on another filesystem than {cfg.base_path}; the version cannot "
                            f"be moved atomically (set [paths] work_dir on the same filesystem)")
    if target.exists():
        raise RollbackError(f"{target} already exists; try again in a second")
    try:
        os.rename(versions[version], target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise RollbackError(f"{target.parent} is on another filesystem than {cfg.base_path}") from error
        raise
    fsync_dir(cfg.base_path)
    fsync_dir(target.parent)
    history = History(cfg.ledger_path)
    try:
        if any(row["version"] == version for row in history.versions()):
            history.set_version_state(version, "rolled_back", f"moved to {target}")
        else:
            history.record_version(version, None, target, None, "rolled_back", f"moved to {target}")
    finally:
        history.close()
    serving = max(remaining) if remaining else None
    log.warning("version_rolled_back", version=version, moved_to=str(target), serving=serving)
    return {"version": version, "moved_to": str(target), "serving": serving}
