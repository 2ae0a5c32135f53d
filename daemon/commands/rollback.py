"""``odal rollback``: take a bad model version out of serving, safely, so TF Serving falls back to the previous one.

The version folder is moved in one rename to ``<base_path>/.quarantine/<version>-<unix time>`` by
:func:`publish.quarantine` (the same place a version that fails its serving check goes: on the same filesystem by
construction, and not an integer name, so TF Serving ignores it; kept for inspection, never deleted by odal).  The
history records the version as ``rolled_back``; because ``publish.next_version`` counts every version ever recorded,
later versions still get higher numbers.  The last remaining version is only removed with ``force`` (TF Serving
would then serve nothing).

Safe next to a running daemon: the rename is atomic, and the daemon's retention only deletes numbered folders
that are still there.
"""

from __future__ import annotations

from odal.daemon.system import log as logs
from odal.daemon.config import Config
from odal.common.errors import OdalError
from odal.daemon.rounds import publish
from odal.daemon.store.history import History

log = logs.get("odal.rollback")


class RollbackError(OdalError):
    """The version cannot be taken out of serving (not there, or the last one without --force)."""


def rollback(cfg: Config, version: int | None = None, force: bool = False) -> dict:
    """Move ``version`` (default: the newest) out of the base path; returns {version, moved_to, serving}."""
    versions = publish.version_dirs(cfg.base_path)
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
    history = History(cfg.ledger_path)
    try:
        known = any(row["version"] == version for row in history.versions())
        target = publish.quarantine(cfg.base_path, version)
        if known:
            history.set_version_state(version, "rolled_back", f"moved to {target}")
        else:
            history.record_version(version, None, target, None, "rolled_back", f"moved to {target}")
    finally:
        history.close()
    serving = max(remaining) if remaining else None
    log.warning("version_rolled_back", version=version, moved_to=str(target), serving=serving)
    return {"version": version, "moved_to": str(target), "serving": serving}
