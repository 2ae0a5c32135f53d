"""Publish a finished export as TF Serving's next numbered version, keep the newest K, and recover after a crash.

The worker exports into ``<base_path>/.staging-round-<id>``: on the same filesystem as the versions, and a name
that TF Serving ignores (only integer names are versions).  Publishing checks the export is complete, writes
odal's marker (``assets.extra/odal.json``), fsyncs everything, and renames the folder to ``<base_path>/<N>`` with
N greater than any version ever published.  A crash at any point leaves either no new version or a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from odal.daemon.system import log as logs
from odal.daemon.system.atomic import atomic_write_text, fsync_dir, publish_dir, remove_tree
from odal.common.errors import PublishError
from odal.daemon.store.history import History

MARKER = Path("assets.extra") / "odal.json"
QUARANTINE = ".quarantine"  # <base_path>/.quarantine/<version>-<unix time>: versions out of serving, kept
log = logs.get("odal.publish")


def staging_dir(base_path: Path, round_id: int) -> Path:
    return base_path / f".staging-round-{round_id}"


def version_dirs(base_path: Path) -> dict[int, Path]:
    """The numbered version folders TF Serving would see (integer names only)."""
    if not base_path.is_dir():
        return {}
    return {int(p.name): p for p in base_path.iterdir() if p.is_dir() and p.name.isdigit()}


def is_complete(export_dir: Path) -> bool:
    return (export_dir / "saved_model.pb").is_file() and (export_dir / "variables" / "variables.index").is_file()


def next_version(base_path: Path, history: History) -> int:
    """Strictly greater than every version on disk and every version ever recorded (deleted ones included)."""
    return max([history.max_version(), *version_dirs(base_path)], default=0) + 1


def publish(staging: Path, base_path: Path, history: History, round_id: int, metrics: dict | None) -> tuple[int, Path]:
    """Rename the complete export ``staging`` into the next version folder (numbered past every version in
    ``history``, which is only read); return (version, path).  The caller records it."""
    if not is_complete(staging):
        raise PublishError(f"{staging}: export incomplete (needs saved_model.pb and variables/variables.index)")
    version = next_version(base_path, history)
    target = base_path / str(version)
    atomic_write_text(staging / MARKER, json.dumps(
        {"round": round_id, "version": version, "metrics": metrics, "published_at": time.time()}, indent=1))
    publish_dir(staging, target)
    log.info("version_published", round=round_id, version=version, path=str(target))
    return version, target


def quarantine(base_path: Path, version: int) -> Path:
    """Move a version out of the numbered namespace (one rename, same filesystem) so the server drops it.

    The folder goes to ``<base_path>/.quarantine/<version>-<unix time>``: not an integer name, so TF Serving
    ignores it, and still on the same filesystem as the versions.
    """
    source = base_path / str(version)
    target = base_path / QUARANTINE / f"{version}-{int(time.time())}"
    target.parent.mkdir(exist_ok=True)
    os.rename(source, target)
    fsync_dir(base_path)
    fsync_dir(target.parent)
    return target


def prune_versions(base_path: Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` numbered versions (each disappears in one rename); returns them."""
    versions = version_dirs(base_path)
    doomed = sorted(versions)[:-keep] if len(versions) > keep else []
    for version in doomed:
        remove_tree(versions[version])
        log.info("version_deleted", version=version, reason="retention", keep=keep)
    return doomed


def recover(base_path: Path, history: History) -> None:
    """After a crash: drop half-made staging/deleting folders; record a version renamed in but not yet recorded."""
    if not base_path.is_dir():
        return
    for leftover in list(base_path.glob(".staging-round-*")) + list(base_path.glob(".deleting-*")):
        shutil.rmtree(leftover, ignore_errors=True)  # neither name is a version TF Serving would look at
        log.warning("leftover_removed", path=str(leftover))
    on_disk = version_dirs(base_path)
    for row in history.versions():  # deleted by retention, killed before the history said so
        if row["state"] in ("published", "unconfirmed", "confirmed") and row["version"] not in on_disk:
            history.set_version_state(row["version"], "deleted", "missing from the base path at start")
            log.warning("version_missing", version=row["version"], path=row["path"])
    known = {row["version"] for row in history.versions()}
    for version, path in sorted(version_dirs(base_path).items()):
        if version in known:
            continue
        marker = path / MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        history.record_version(version, info.get("round"), path, info.get("metrics"), "published",
                               None if info else "found on disk, not published by odal")
        if info.get("round") is not None:
            history.finish_round(info["round"], "published", version=version)
        log.warning("version_recovered", version=version, round=info.get("round"))

