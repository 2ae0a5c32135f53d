"""``odal rollback`` takes a bad model version out of serving, safely, so TF Serving falls back to the previous one;
``odal restore VERSION`` puts a rolled-back version back.

The version folder is moved in one rename to ``<base_path>/.quarantine/<version>-<unix time>`` by
:func:`publish.quarantine` (the same place a version that fails its serving check goes: on the same filesystem by
construction, and not an integer name, so TF Serving ignores it; kept for inspection, never deleted by odal).  The
history records the version as ``rolled_back`` with its new path; because ``publish.next_version`` counts every
version ever recorded, later versions still get higher numbers.  The last remaining version is only removed with
``force`` (TF Serving would then serve nothing).  ``restore`` renames the folder back to ``<base_path>/<version>``.

Both then ask the server (``[serving] address``) which versions it has AVAILABLE, waiting (at most
``confirm_timeout_seconds``) until it has noticed the change: what they report is what the server says, not a guess.

Safe next to a running daemon: the renames are atomic, and the daemon's retention only deletes numbered folders
that are still there.
"""

from __future__ import annotations

import os
import time

from odal.daemon.system import log as logs
from odal.daemon.config import Config
from odal.common.errors import OdalError
from odal.daemon.rounds import publish
from odal.daemon.store.history import History
from odal.daemon.system.atomic import fsync_dir

log = logs.get("odal.rollback")


class RollbackError(OdalError):
    """The version cannot be taken out of serving (not there, or the last one without --force), or put back."""


def rollback(cfg: Config, version: int | None = None, force: bool = False) -> dict:
    """Move ``version`` (default: the newest) out of the base path; returns {version, moved_to, serving}
    (``serving``: the newest version left on disk, what TF Serving's default policy serves)."""
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
        if not known:
            history.record_version(version, None, versions[version], None, "published", "found on disk")
        target = publish.quarantine(cfg.base_path, version)
        history.set_version_state(version, "rolled_back", f"moved to {target}", path=target)
    finally:
        history.close()
    serving = max(remaining) if remaining else None
    log.warning("version_rolled_back", version=version, moved_to=str(target), serving=serving)
    return {"version": version, "moved_to": str(target), "serving": serving}


def restore(cfg: Config, version: int, force: bool = False) -> dict:
    """Move rolled-back ``version`` back into the base path; returns {version, path, moved_from, newer}
    (``newer``: versions on disk above it, which TF Serving's default policy serves instead)."""
    on_disk = publish.version_dirs(cfg.base_path)
    if version in on_disk:
        raise RollbackError(f"version {version} is already in {cfg.base_path}; nothing to restore")
    history = History(cfg.ledger_path)
    try:
        row = next((r for r in history.versions() if r["version"] == version), None)
        candidates = sorted((cfg.base_path / publish.QUARANTINE).glob(f"{version}-*"),
                            key=lambda p: int(p.name.partition("-")[2] or 0))
        if row is not None and row["state"] == "quarantined" and not force:
            raise RollbackError(f"version {version} was quarantined because it did not serve ({row['note']}); "
                                f"use --force to restore it anyway")
        source = next((c for c in reversed(candidates) if row is not None and str(c) == row["path"]), None)
        source = source or (candidates[-1] if candidates else None)
        if source is None or not publish.is_complete(source):
            raise RollbackError(f"version {version} is not in {cfg.base_path / publish.QUARANTINE} (rolled-back "
                                f"versions there: {', '.join(sorted(p.name for p in candidates)) or 'none'})")
        target = cfg.base_path / str(version)
        os.rename(source, target)
        fsync_dir(source.parent)
        fsync_dir(cfg.base_path)
        if row is None:
            history.record_version(version, None, target, None, "published", f"restored from {source}")
        else:
            history.set_version_state(version, "published", f"restored from {source}", path=target)
    finally:
        history.close()
    newer = sorted(v for v in on_disk if v > version)
    log.warning("version_restored", version=version, moved_from=str(source), path=str(target), newer=newer)
    return {"version": version, "path": str(target), "moved_from": str(source), "newer": newer}


def server_view(cfg: Config, gone: int | None = None, wanted: int | None = None,
                timeout: float | None = None) -> dict:
    """What the server says now: {"address", "available": [versions], "settled", "error"} once ``gone`` is not
    AVAILABLE and ``wanted`` is (or ``timeout`` passed: ``settled`` False); {"address": ""} when none is set."""
    if not cfg.serving_address:
        return {"address": "", "available": None, "settled": False, "error": "no [serving] address configured"}
    from odal.serving.client import ServingClient
    from odal.serving.errors import ServingError

    timeout = min(cfg.confirm_timeout_seconds, 120.0) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    available, error = None, None
    with ServingClient(cfg.serving_address, timeout=5.0, retries=1) as client:
        while True:
            try:
                statuses = client.model_status(cfg.model_name, timeout=5.0)
                available, error = sorted(s.version for s in statuses if s.state == "AVAILABLE"), None
                if gone not in available and (wanted is None or wanted in available):
                    return {"address": cfg.serving_address, "available": available, "settled": True, "error": None}
            except ServingError as failure:
                if failure.code == "NOT_FOUND" and wanted is None:  # it answered: no version of the model is loaded
                    return {"address": cfg.serving_address, "available": [], "settled": True, "error": None}
                error = f"{failure.code}: {failure.message}"
            if time.monotonic() + 0.5 > deadline:
                return {"address": cfg.serving_address, "available": available, "settled": False, "error": error}
            time.sleep(0.5)


def describe(view: dict) -> str:
    """One sentence on what the server said."""
    if not view["address"]:
        return f"not asked: {view['error']}"
    if view["available"] is None:
        return f"the server at {view['address']} did not answer ({view['error']})"
    now = f"{max(view['available'])}" if view["available"] else "nothing"
    listed = ", ".join(map(str, view["available"])) or "none"
    late = "" if view["settled"] else " (it has not picked up the change yet: ask again with `odal status`)"
    return f"the server at {view['address']} serves version {now} (AVAILABLE: {listed}){late}"


def run(cfg: Config, command: str, version: int | None, force: bool) -> str:
    """``odal rollback`` / ``odal restore``: do it, ask the server, and say both."""
    if command == "rollback":
        done = rollback(cfg, version, force)
        left = f"the newest version left is {done['serving']}" if done["serving"] else "no version is left"
        view = server_view(cfg, gone=done["version"])
        return f"version {done['version']} moved to {done['moved_to']}; {left}; {describe(view)}"
    done = restore(cfg, version, force)
    newer = (f"; version {done['newer'][-1]} is newer and stays the one served (roll it back to serve "
             f"{version})" if done["newer"] else "")
    view = server_view(cfg, wanted=None if done["newer"] else version)
    return f"version {version} restored to {done['path']}{newer}; {describe(view)}"
