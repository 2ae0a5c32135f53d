"""What the daemon has done: rounds and published model versions (tables in the workspace's ledger database).

A round is ``running`` until it ends ``published``, ``held_back`` (trained and evaluated, but the publish gate
found it worse than the served version: not published, and the next round trains on from it), ``failed``,
``abandoned`` (daemon stopped or crashed) or ``skipped`` (nothing to train on).  A round's ``gate`` is the
decision of :func:`odal.daemon.rounds.gate.decide` with the eval set it used.  A version row is written after its folder
was renamed into the base path.  Written by the round thread's orchestration (odal.daemon.rounds.round) through its
own connection; at start by crash recovery (odal.daemon.rounds.publish.recover); by ``odal rollback``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from odal.daemon.store import db as store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    seq INTEGER NOT NULL,
    accepted INTEGER,
    n_train INTEGER,
    n_eval INTEGER,
    steps INTEGER,
    global_step INTEGER,
    checkpoint TEXT,
    metrics TEXT,
    timings TEXT,
    version INTEGER,
    error TEXT,
    gate TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    round_id INTEGER,
    path TEXT NOT NULL,
    metrics TEXT,
    published_at REAL NOT NULL,
    state TEXT NOT NULL,
    note TEXT
);
"""

_JSON_COLUMNS = ("metrics", "timings", "gate")
_TRAINED = "('published', 'held_back')"  # rounds whose checkpoint the next round continues from


class History:
    def __init__(self, path: Path, readonly: bool = False):
        self._db = store.connect(path, readonly=readonly, timeout=10 if readonly else 30)
        if not readonly:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rounds)")}
            if "gate" not in columns:  # a ledger written before the publish gate
                try:
                    self._db.execute("ALTER TABLE rounds ADD COLUMN gate TEXT")
                except sqlite3.OperationalError as error:  # another connection added it meanwhile
                    if "duplicate column" not in str(error):
                        raise

    def close(self) -> None:
        self._db.close()

    def _update(self, table: str, key: str, value: int, **fields) -> None:
        fields = {k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()}
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(f"UPDATE {table} SET {assignments} WHERE {key} = ?", [*fields.values(), value])

    # -- rounds --------------------------------------------------------------------------------------------------------
    def start_round(self, seq: int) -> int:
        cursor = self._db.execute("INSERT INTO rounds (state, started_at, seq) VALUES ('running', ?, ?)",
                                  (time.time(), seq))
        return cursor.lastrowid

    def update_round(self, round_id: int, **fields) -> None:
        self._update("rounds", "id", round_id, **fields)

    def finish_round(self, round_id: int, state: str, **fields) -> None:
        self._update("rounds", "id", round_id, state=state, finished_at=time.time(), **fields)

    def abandon_running(self) -> list[int]:
        """Mark rounds left ``running`` by a crashed or killed daemon as abandoned; returns their ids."""
        ids = [row[0] for row in self._db.execute("SELECT id FROM rounds WHERE state = 'running'")]
        for round_id in ids:
            self.finish_round(round_id, "abandoned", error="the daemon stopped during this round")
        return ids

    def rounds(self, limit: int = 50) -> list[dict]:
        rows = self._db.execute("SELECT * FROM rounds ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_decode(row) for row in reversed(rows)]

    def last_trained_seq(self) -> int:
        """The ledger change counter covered by the newest trained round, published or held back (0 before any)."""
        row = self._db.execute(f"SELECT MAX(seq) FROM rounds WHERE state IN {_TRAINED}").fetchone()
        return row[0] or 0

    def checkpoints(self) -> list[tuple[int, str]]:
        """(round id, checkpoint prefix) of trained rounds (published or held back), newest first."""
        return [(r[0], r[1]) for r in self._db.execute(
            f"SELECT id, checkpoint FROM rounds WHERE state IN {_TRAINED} AND checkpoint IS NOT NULL ORDER BY id DESC")]

    # -- versions ------------------------------------------------------------------------------------------------------
    def record_version(self, version: int, round_id: int | None, path: Path, metrics: dict | None, state: str,
                       note: str | None = None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO versions (version, round_id, path, metrics, published_at, state, note)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (version, round_id, str(path), json.dumps(metrics) if metrics else None, time.time(), state, note),
        )

    def set_version_state(self, version: int, state: str, note: str | None = None, path: Path | None = None) -> None:
        """``path``: where the version's folder is now (moved out of the base path, or back into it)."""
        fields = {"path": str(path)} if path is not None else {}
        self._update("versions", "version", version, state=state, note=note, **fields)

    def versions(self) -> list[dict]:
        return [_decode(row) for row in self._db.execute("SELECT * FROM versions ORDER BY version")]

    def max_version(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM versions").fetchone()
        return row[0] or 0


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for name in _JSON_COLUMNS:
        if out.get(name):
            out[name] = json.loads(out[name])
    return out
