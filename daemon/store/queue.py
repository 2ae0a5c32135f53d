"""The active-learning queue: every image of the data dir not yet annotated, scored by the served model.

Rows live in the workspace ledger file (table ``active_queue``, created here ``IF NOT EXISTS``), keyed by the
image's resolved path; ``digest`` (SHA-256 of the bytes) and ``input_hash`` (odal's content hash, see
``odal.recipe.tasks.content_hash``) say which content was scored.  A changed file (other size or mtime) loses its
score; a deleted one loses its row.  ``uncertainty`` is ``odal.common.uncertainty.uncertainty`` (the least
confident detection above a floor) and ``scored_version`` the model version that answered; ``score``,
``score_tiebreak``, ``detections`` and ``embedding`` are what the ``diverse`` strategy ranks by
(:mod:`odal.daemon.store.queue_order`).  :meth:`ActiveQueue.rescore_all` records a newer target version: rows
scored by an older one keep their score for ordering until re-scored.

The daemon calls everything from its loop thread; each call is bounded (``score_pending`` scores at most
``limit`` images and stops at the first unreachable-server error).  The recipe, another process, opens the same
file read-only (:meth:`ActiveQueue.reader`) and asks :meth:`ActiveQueue.next_images` for the unanswered images in
the order of a strategy (``uncertainty``, ``diverse``, ``random``).  Answered images are scored too, after every
unanswered one: their embeddings are the labelled ones the ``diverse`` strategy keeps away from.  No TensorFlow
here: images are decoded with Pillow, the model is asked through ``odal.serving.client``.  Files are read only
through :mod:`odal.daemon.sources.safe_files` (regular files inside the data dir, bounded bytes) and decoded by
:mod:`odal.daemon.sources.images` (pixels bounded from the header, shrunk to at most 1024 pixels a side for
scoring); a refused or broken image is marked with its error, logged once, and not read again until the file
changes.

Wiring in the daemon (after the ledger is open): ``ActiveQueue(cfg.ledger_path, cfg.data_dir)`` then ``scan()``;
on ``ImageChanged`` call ``image_changed(event.path, event.deleted)``; each idle loop tick
``score_pending(client, cfg.model_name, limit=64, max_seconds=0.5)`` (bench/results/rescoring.md); when a
published version is confirmed ``rescore_all(version)``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import structlog

from odal.daemon.sources import safe_files

from odal.daemon.store import db as store
from odal.daemon.store import queue_order
from odal.daemon.sources.images import pixels_for_scoring
from odal.daemon.watchers.image_dir import IMAGE_SUFFIXES

log = structlog.get_logger("odal.active_queue")

SCHEMA_VERSION = 2
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
    added_at REAL NOT NULL,
    score REAL,
    score_tiebreak REAL,
    detections BLOB,
    embedding BLOB
);
CREATE INDEX IF NOT EXISTS active_queue_uncertainty ON active_queue (uncertainty);
CREATE TABLE IF NOT EXISTS active_queue_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ADDED_IN_2 = ("score REAL", "score_tiebreak REAL", "detections BLOB", "embedding BLOB")
_SCORE_COLUMNS = "uncertainty, score, score_tiebreak, detections, embedding"


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _lexical(path: Path) -> Path:
    """``path`` made absolute and normalised without touching the filesystem (a loop or a FIFO is never read)."""
    return Path(os.path.abspath(path))


def _is_answered(row, hashes: set[str], paths: set[str]) -> bool:
    return row["path"] in paths or (row["input_hash"] is not None and row["input_hash"] in hashes)


class ActiveQueue:
    """The queue in the ledger file ``db_path`` for the images below ``data_dir``; thread-safe (one lock)."""

    def __init__(self, db_path: Path, data_dir: Path | None, *, readonly: bool = False) -> None:
        self.db_path = Path(db_path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn = store.connect(self.db_path, readonly=readonly, timeout=10 if readonly else 30)
        if readonly:
            stored = self._meta("data_dir")
            self.data_dir = Path(data_dir or stored) if (data_dir or stored) else None
            return
        self.data_dir = Path(data_dir).resolve()
        with self._write() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            present = {row[1] for row in conn.execute("PRAGMA table_info(active_queue)")}
            for column in _ADDED_IN_2:  # a queue made by schema 1: same rows, the new columns empty
                if column.split()[0] not in present:
                    conn.execute(f"ALTER TABLE active_queue ADD COLUMN {column}")
            conn.execute("UPDATE active_queue_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR IGNORE INTO active_queue_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT INTO active_queue_meta VALUES ('data_dir', ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value", (str(self.data_dir),))

    @classmethod
    def reader(cls, workspace: Path) -> "ActiveQueue":
        """The queue of a daemon workspace (its work dir, or the ledger file itself), opened read-only."""
        path = Path(workspace)
        return cls(path / "ledger.sqlite" if path.is_dir() else path, None, readonly=True)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ActiveQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- image events

    def image_changed(self, path: str | Path, deleted: bool = False) -> None:
        """An :class:`ImageChanged` event: add or refresh the image, or drop it when deleted, gone or refused."""
        if not _is_image_name(Path(path).name):
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
        for dirpath, dirnames, filenames in os.walk(self.data_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if _is_image_name(name):
                    checked = self._check(Path(dirpath) / name)
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
            "uncertainty = NULL, score = NULL, score_tiebreak = NULL, detections = NULL, embedding = NULL, "
            "scored_version = NULL, scored_at = NULL, error = NULL "
            "WHERE size != excluded.size OR mtime_ns != excluded.mtime_ns",
            (str(path), st.st_size, st.st_mtime_ns, time.time()))

    # ---------------------------------------------------------------------------------------------- scoring

    def rescore_all(self, version: int) -> None:
        """A new model version was confirmed: every row scored by an older version is pending again."""
        with self._write() as conn:
            conn.execute("INSERT INTO active_queue_meta VALUES ('target_version', ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                         (str(int(version)),))

    def pending(self, limit: int, answered: bool = False) -> list[Path]:
        """Unanswered images to score next: never scored first, then those scored by an older version.  With
        ``answered``: the answered images to score (for their embeddings) when no unanswered one is pending."""
        target = int(self._meta("target_version") or 0)
        rows = self._read(
            "SELECT path, input_hash FROM active_queue WHERE error IS NULL AND "
            "(uncertainty IS NULL OR scored_version < ?) ORDER BY uncertainty IS NOT NULL, added_at, path", (target,))
        if answered:
            waiting = {row["path"] for row in self._unanswered(rows, (), len(rows))}
            return [Path(r["path"]) for r in rows if r["path"] not in waiting][:limit]
        return [Path(r["path"]) for r in self._unanswered(rows, (), limit)]

    def score_pending(self, client, model_name: str, limit: int = 16, concurrency: int = 4,
                      max_seconds: float | None = None) -> int:
        """Score at most ``limit`` pending images with the served model; returns how many were scored.

        ``client`` is an ``odal.serving.client.ServingClient``.  Network I/O, bounded: pipelined ``predict_many``
        calls of ``2 * concurrency`` images (each request under the client's deadline), at most ``limit``
        images, and no new call once ``max_seconds`` have passed (None: no time bound); a serving error (server
        down, no version yet) stops the step and the next call tries again.  An unreadable image is marked with its
        error and not retried until the file changes.
        """
        started = time.monotonic()
        done = 0
        while done < limit:
            scored = self._score_chunk(client, model_name, min(limit - done, 2 * max(concurrency, 1)), concurrency)
            done += scored
            if scored == 0 or (max_seconds is not None and time.monotonic() - started >= max_seconds):
                break
        return done

    def _score_chunk(self, client, model_name: str, limit: int, concurrency: int) -> int:
        from odal.recipe.tasks import content_hash
        from odal.serving.errors import ServingError

        images = self.read_pending(limit)
        if not images:
            return 0
        try:
            found = client.predict_many(model_name, [image.pixels for image in images], concurrency=concurrency)
        except ServingError as error:
            log.info("active_queue_scoring_paused", error=str(error), pending=len(images))
            return 0
        now = time.time()
        with self._write() as conn:
            for image, detections in zip(images, found):
                values = queue_order.score_values(detections.scores, detections.classes, detections.embedding)
                conn.execute(
                    "UPDATE active_queue SET digest = :digest, input_hash = :input_hash, uncertainty = :uncertainty, "
                    "score = :score, score_tiebreak = :score_tiebreak, detections = :detections, "
                    "embedding = :embedding, scored_version = :version, scored_at = :now WHERE path = :path",
                    {**values, "digest": hashlib.sha256(image.data).hexdigest(),
                     "input_hash": str(content_hash(image.data)), "version": int(detections.model_version),
                     "now": now, "path": str(image.path)})
        return len(images)

    def read_pending(self, limit: int) -> list:
        """The next ``limit`` pending images read for scoring (``odal.recipe.tasks.ImageData``, pixels shrunk to at
        most 1024 a side); an image that is gone, refused or undecodable is marked with its error and logged once
        (it is pending again only when its file changes)."""
        from odal.recipe.tasks import ImageData

        images = []
        paths = self.pending(limit)
        for path in paths + (self.pending(limit - len(paths), answered=True) if len(paths) < limit else []):
            try:
                resolved, _st, data = safe_files.read_file(path, [self.data_dir])
                pixels = pixels_for_scoring(data)
            except FileNotFoundError:
                self._set(path, error="FileNotFoundError: gone")
                continue
            except Exception as error:  # noqa: BLE001 - refused, too large, undecodable, or a Pillow surprise
                self._set(path, error=f"{type(error).__name__}: {error}")
                log.warning("active_queue_image_unreadable", path=str(path), error=f"{type(error).__name__}: {error}")
                continue
            images.append(ImageData(resolved, data, pixels.shape[1], pixels.shape[0], pixels))
        return images

    def _set(self, path: Path, **values) -> None:
        columns = ", ".join(f"{key} = ?" for key in values)
        with self._write() as conn:
            conn.execute(f"UPDATE active_queue SET {columns} WHERE path = ?", (*values.values(), str(path)))

    # ---------------------------------------------------------------------------------------------- reading

    def next_images(self, n: int, exclude_hashes: Iterable[str | int] = (), strategy: str = "uncertainty",
                    labels: Sequence[str] | None = None, batch: int = queue_order.DEFAULT_BATCH) -> list[dict]:
        """The first ``n`` unanswered images in ``strategy``'s order (:func:`odal.daemon.store.queue_order.order`;
        ``uncertainty``: scored ones by uncertainty, highest first, then unscored).  ``labels`` (the label map's,
        by id) lets ``diverse`` count the labelled boxes per class; ``batch`` is how many it picks.

        Answered means: its path is in the ledger's annotations, or its input hash is in the ledger or in
        ``exclude_hashes``.  Each item: ``path``, ``uncertainty``, ``scored_version``, ``input_hash``, ``digest``.
        """
        if strategy == "uncertainty":
            rows = self._read(
                "SELECT path, uncertainty, scored_version, input_hash, digest FROM active_queue WHERE error IS NULL "
                "ORDER BY uncertainty IS NULL, uncertainty DESC, path", ())
            return [dict(r) for r in self._unanswered(rows, exclude_hashes, n)]
        rows = self._read(f"SELECT path, scored_version, input_hash, digest, {_SCORE_COLUMNS} FROM active_queue "
                          "WHERE error IS NULL", ())
        hashes, paths = self.answered()
        hashes.update(str(h) for h in exclude_hashes)
        done = [_is_answered(row, hashes, paths) for row in rows]
        counts = None
        if labels:
            try:
                boxes = self._read("SELECT boxes FROM annotations WHERE answer = 'accept'", ())
            except sqlite3.OperationalError:  # no ledger table yet: nothing labelled
                boxes = []
            counts = queue_order.class_counts((row["boxes"] for row in boxes), labels)
        ordered = queue_order.order([r for r, d in zip(rows, done) if not d], strategy, batch=batch, counts=counts,
                                    answered=[r for r, d in zip(rows, done) if d])
        return [{key: row[key] for key in ("path", "uncertainty", "scored_version", "input_hash", "digest")}
                for row in ordered[:max(n, 0)]]

    def status(self) -> dict:
        """``images``, ``scored``, ``pending``, ``target_version``, ``scored_version`` (newest used), ``data_dir``."""
        target = int(self._meta("target_version") or 0)
        row = self._read(
            "SELECT COUNT(*) AS images, COUNT(uncertainty) AS scored, MAX(scored_version) AS newest, "
            "SUM(uncertainty IS NULL OR scored_version < ?) AS pending FROM active_queue WHERE error IS NULL",
            (target,))[0]
        return {"images": row["images"], "scored": row["scored"], "pending": row["pending"] or 0,
                "target_version": target or None, "scored_version": row["newest"],
                "data_dir": str(self.data_dir) if self.data_dir else None}

    def answered(self) -> tuple[set[str], set[str]]:
        """The ledger's answered input hashes and image paths (both empty when the ledger has no table yet)."""
        hashes: set[str] = set()
        paths: set[str] = set()
        if self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'annotations'", ()):
            for row in self._read("SELECT input_hash, image_path FROM annotations", ()):
                hashes.add(row["input_hash"])
                if row["image_path"]:
                    paths.add(row["image_path"])
        return hashes, paths

    def _unanswered(self, rows: list[sqlite3.Row], exclude_hashes: Iterable[str | int], limit: int) -> list:
        """The first ``limit`` rows whose image has no answer in the ledger (by path or input hash)."""
        hashes, paths = self.answered()
        hashes.update(str(h) for h in exclude_hashes)
        out = []
        for row in rows:
            if _is_answered(row, hashes, paths):
                continue
            out.append(row)
            if len(out) >= limit:
                break
        return out

    def _meta(self, key: str) -> str | None:
        try:
            rows = self._read("SELECT value FROM active_queue_meta WHERE key = ?", (key,))
        except sqlite3.OperationalError:  # a workspace whose daemon never made a queue
            return None
        return rows[0]["value"] if rows else None

    # --------------------------------------------------------------------------------------------- plumbing

    def _read(self, sql: str, params: tuple) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _write(self):
        if self.readonly:
            raise PermissionError(f"the active queue in {self.db_path} is open read-only")
        return store.Transaction(self._conn, self._lock)
