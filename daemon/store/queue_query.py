"""The active-learning queue, read-only: the one way the recipe (another process) and ``odal status`` read it.

The daemon owns the table (odal.daemon.store.queue writes it, odal.daemon.handlers.scoring scores it); readers
open the workspace's ledger file read-only and ask for the most uncertain unanswered images and the queue's
status.  No TensorFlow, no numpy: SQLite only.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from odal.daemon.store import db as store


class QueueQuery:
    """The queue in the ledger file ``db_path``, read-only unless a subclass opens it to write; thread-safe."""

    def __init__(self, db_path: Path, data_dir: Path | None = None, *, readonly: bool = True) -> None:
        self.db_path = Path(db_path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn = store.connect(self.db_path, readonly=readonly, timeout=10 if readonly else 30)
        stored = self._meta("data_dir") if readonly else None
        self.data_dir = Path(data_dir or stored) if (data_dir or stored) else None

    @classmethod
    def reader(cls, workspace: Path) -> "QueueQuery":
        """The queue of a daemon workspace (its work dir, or the ledger file itself), opened read-only."""
        path = Path(workspace)
        return QueueQuery(path / store.LEDGER_FILE if path.is_dir() else path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "QueueQuery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_images(self, n: int, exclude_hashes: Iterable[str | int] = ()) -> list[dict]:
        """The ``n`` most uncertain unanswered images: scored ones by uncertainty (highest first), then unscored.

        Answered means: its path is in the ledger's annotations, or its input hash is in the ledger or in
        ``exclude_hashes``.  Each item: ``path``, ``uncertainty``, ``scored_version``, ``input_hash``, ``digest``.
        """
        rows = self._read(
            "SELECT path, uncertainty, scored_version, input_hash, digest FROM active_queue WHERE error IS NULL "
            "ORDER BY uncertainty IS NULL, uncertainty DESC, path", ())
        return [dict(r) for r in self._unanswered(rows, exclude_hashes, n)]

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
            if row["path"] in paths or (row["input_hash"] is not None and row["input_hash"] in hashes):
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

    def _read(self, sql: str, params: tuple) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()
