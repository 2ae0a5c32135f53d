"""The active-learning queue, stored: every image of the data dir not yet annotated, with the served model's score.

Rows live in the workspace ledger file (table ``active_queue``, created here ``IF NOT EXISTS``), keyed by the
image's resolved path; ``digest`` (SHA-256 of the bytes) and ``input_hash`` (odal.common.hashing.content_hash) say
which content was scored.  A changed file (other size or mtime) loses its score; a deleted one loses its row.
``uncertainty`` is ``odal.common.uncertainty.uncertainty`` and ``scored_version`` the model version that answered.
:meth:`ActiveQueue.rescore_all` records a newer target version: rows scored by an older one keep their score for
ordering until re-scored.  Scoring itself is odal.daemon.handlers.scoring; readers (the recipe, ``odal status``)
use odal.daemon.store.queue_query, whose queries this class inherits.

The daemon calls everything from its loop thread.  Files are only listed and checked here, through
:mod:`odal.daemon.sources.safe_files` (regular files inside the data dir): a refused file is logged once and skipped.
Wiring (after the ledger is open): ``ActiveQueue(cfg.ledger_path, cfg.data_dir)`` then ``scan()``; on
``ImageChanged`` call ``image_changed(event.path, event.deleted)``; when a version is published ``rescore_all``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from odal.common.images import image_files, is_image_name
from odal.daemon.sources import safe_files
from odal.daemon.store import db as store
from odal.daemon.store.queue_query import QueueQuery
from odal.daemon.system import log as logs

log = logs.get("odal.active_queue")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS active_queue (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT,
    input_hash TEXT,
    uncertainty REAL,
    scored_version INTEGER,
    scored_at REAL,
    error TEXT,
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS active_queue_uncertainty ON active_queue (uncertainty);
CREATE TABLE IF NOT EXISTS active_queue_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _lexical(path: Path) -> Path:
    """``path`` made absolute and normalised without touching the filesystem (a loop or a FIFO is never read)."""
    return Path(os.path.abspath(path))


class ActiveQueue(QueueQuery):
    """The queue in the ledger file ``db_path`` for the images below ``data_dir``, opened to write; thread-safe."""

    def __init__(self, db_path: Path, data_dir: Path) -> None:
        super().__init__(db_path, Path(data_dir).resolve(), readonly=False)
        with self._write() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO active_queue_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT INTO active_queue_meta VALUES ('data_dir', ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value", (str(self.data_dir),))

    # ------------------------------------------------------------------------------------------- image events

    def image_changed(self, path: str | Path, deleted: bool = False) -> None:
        """An :class:`ImageChanged` event: add or refresh the image, or drop it when deleted, gone or refused."""
        if not is_image_name(Path(path).name):
            return
        candidate = Path(path) if Path(path).is_absolute() else self.data_dir / path
        if deleted:
            found = None
        else:
            found = self._check(candidate)
        with self._write() as conn:
            if found is None:
                conn.execute("DELETE FROM active_queue WHERE path = ?", (str(_lexical(candidate)),))
            else:
                if found[0] != _lexical(candidate):  # a symlink inside the data dir: the row is the target's
                    conn.execute("DELETE FROM active_queue WHERE path = ?", (str(_lexical(candidate)),))
                self._upsert(conn, *found)

    def scan(self) -> dict:
        """At start: add every image below the data dir, refresh changed ones, drop rows of vanished files.

        Only regular files inside the data dir are listed (:func:`odal.daemon.sources.safe_files.check_file`): a FIFO, a
        device, a symlink loop or a link leading out is skipped with one ``active_queue_file_skipped`` line."""
        found: dict[str, os.stat_result] = {}
        skipped = 0
        for path in image_files(self.data_dir):
            checked = self._check(path)
            if checked is None:
                skipped += 1
            else:
                found[str(checked[0])] = checked[1]
        with self._write() as conn:
            known = {r["path"] for r in conn.execute("SELECT path FROM active_queue")}
            gone = known - set(found)
            conn.executemany("DELETE FROM active_queue WHERE path = ?", [(p,) for p in gone])
            for path, st in found.items():
                self._upsert(conn, Path(path), st)
        stats = {"images": len(found), "added": len(set(found) - known), "removed": len(gone), "skipped": skipped}
        log.info("active_queue_scanned", **stats)
        return stats

    def _check(self, path: Path) -> tuple[Path, os.stat_result] | None:
        """(resolved path, stat) of an image file the queue may read, or None (gone, or refused: logged)."""
        try:
            return safe_files.check_file(path, [self.data_dir])
        except FileNotFoundError:
            return None
        except (safe_files.Refused, OSError) as error:
            log.warning("active_queue_file_skipped", path=str(path), error=str(error))
            return None

    def _upsert(self, conn: sqlite3.Connection, path: Path, st: os.stat_result) -> None:
        """Insert the image, or reset its score when its size or mtime changed (new content)."""
        conn.execute(
            "INSERT INTO active_queue (path, size, mtime_ns, added_at) VALUES (?,?,?,?) ON CONFLICT (path) DO UPDATE "
            "SET size = excluded.size, mtime_ns = excluded.mtime_ns, digest = NULL, input_hash = NULL, "
            "uncertainty = NULL, scored_version = NULL, scored_at = NULL, error = NULL "
            "WHERE size != excluded.size OR mtime_ns != excluded.mtime_ns",
            (str(path), st.st_size, st.st_mtime_ns, time.time()))

    # ---------------------------------------------------------------------------------------------- scoring

    def rescore_all(self, version: int) -> None:
        """A new model version was confirmed: every row scored by an older version is pending again."""
        with self._write() as conn:
            conn.execute("INSERT INTO active_queue_meta VALUES ('target_version', ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                         (str(int(version)),))

    def pending(self, limit: int) -> list[Path]:
        """Unanswered images to score next: never scored first, then those scored by an older version."""
        target = int(self._meta("target_version") or 0)
        rows = self._read(
            "SELECT path, input_hash FROM active_queue WHERE error IS NULL AND "
            "(uncertainty IS NULL OR scored_version < ?) ORDER BY uncertainty IS NOT NULL, added_at, path", (target,))
        return [Path(r["path"]) for r in self._unanswered(rows, (), limit)]

    def record_scores(self, scores: list[tuple[Path, str, str, float, int]]) -> None:
        """Store (path, digest, input hash, uncertainty, model version) of images just scored."""
        now = time.time()
        with self._write() as conn:
            conn.executemany("UPDATE active_queue SET digest = ?, input_hash = ?, uncertainty = ?, scored_version = ?, "
                             "scored_at = ? WHERE path = ?",
                             [(digest, input_hash, value, version, now, str(path))
                              for path, digest, input_hash, value, version in scores])

    def mark_error(self, path: Path, error: str) -> None:
        """The image cannot be scored: not pending again until its file changes."""
        with self._write() as conn:
            conn.execute("UPDATE active_queue SET error = ? WHERE path = ?", (error, str(path)))

    # --------------------------------------------------------------------------------------------- plumbing

    def _write(self):
        if self.readonly:
            raise PermissionError(f"the active queue in {self.db_path} is open read-only")
        return store.Transaction(self._conn, self._lock)
