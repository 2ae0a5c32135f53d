"""The durable ledger of annotations: one SQLite file in the work dir, written only in whole transactions.

Each input (``_input_hash``) has one row holding its newest answer; ``accept`` rows are the training set,
``reject``/``ignore`` rows record that the image was seen.  Lines that cannot be used are kept in ``invalid``.
``sources`` holds how far each export file or database has been read, written in the same transaction as the rows
it covers, so a crash never loses a record nor counts one twice (re-reading is harmless: upserts are idempotent).

``seq`` is a change counter: every inserted or changed annotation row gets the next value, so "what changed since
the last round" is a range query.  Other modules keep their own tables in the same file; this module creates only
its own (``IF NOT EXISTS``) and versions them in ``ledger_meta``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from odal.daemon import store
from odal.daemon.prodigy_format import Annotation

SCHEMA_VERSION = 1
EXCERPT_CHARS = 300

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    input_hash TEXT PRIMARY KEY,
    task_hash TEXT,
    timestamp REAL NOT NULL,
    answer TEXT NOT NULL CHECK (answer IN ('accept', 'reject', 'ignore')),
    image_path TEXT,
    width INTEGER,
    height INTEGER,
    boxes TEXT NOT NULL,
    source TEXT NOT NULL,
    line INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ingested_at REAL NOT NULL,
    prev_answer TEXT
);
CREATE INDEX IF NOT EXISTS annotations_seq ON annotations (seq);
CREATE TABLE IF NOT EXISTS invalid (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    line INTEGER NOT NULL,
    digest TEXT NOT NULL,
    error TEXT NOT NULL,
    excerpt TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (source, line, digest)
);
CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
"""

# (annotation, image_path, width, height, source, line)
AnnotationRow = tuple[Annotation, "str | Path | None", "int | None", "int | None", str, int]
# (source, line, error, raw line)
InvalidRow = tuple[str, int, str, "str | bytes"]


class Ledger:
    """The annotations ledger at ``path``: one connection, to be used from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = store.connect(self.path)
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._conn.execute(statement)
            row = self._conn.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise RuntimeError(f"ledger {self.path} has schema {row['value']}, newer than this odal's "
                                   f"{SCHEMA_VERSION}")

    # ------------------------------------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transaction(self):
        return store.Transaction(self._conn, self._lock)

    # ------------------------------------------------------------------------------------------------- writing

    def commit(self, name: str, state: dict | None, annotations: Iterable[AnnotationRow] = (),
               invalid: Iterable[InvalidRow] = ()) -> dict:
        """Write rows, set-aside lines and the state of source ``name`` in ONE transaction; returns counts.

        An annotation replaces the stored one of the same input only if its ``_timestamp`` is >= the stored one
        (ties: the one read later wins); an identical re-read changes nothing.  Stats: ``inserted``, ``updated``,
        ``unchanged``, ``stale`` (older than the stored answer), ``invalid`` (newly set aside).
        """
        stats = {"inserted": 0, "updated": 0, "unchanged": 0, "stale": 0, "invalid": 0}
        now = time.time()
        with self._transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM annotations").fetchone()[0]
            for ann, image_path, width, height, source, line in annotations:
                values = (ann.task_hash, ann.timestamp, ann.answer, None if image_path is None else str(image_path),
                          width, height, json.dumps([box.as_dict() for box in ann.boxes]))
                old = conn.execute(
                    "SELECT task_hash, timestamp, answer, image_path, width, height, boxes FROM annotations "
                    "WHERE input_hash = ?", (ann.input_hash,)).fetchone()
                if old is None:
                    seq += 1
                    conn.execute("INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
                                 (ann.input_hash, *values, source, line, seq, now))
                    stats["inserted"] += 1
                elif ann.timestamp < old["timestamp"]:
                    stats["stale"] += 1
                elif tuple(old) == values:
                    stats["unchanged"] += 1
                else:
                    seq += 1
                    conn.execute(
                        "UPDATE annotations SET task_hash=?, timestamp=?, answer=?, image_path=?, width=?, height=?, "
                        "boxes=?, source=?, line=?, seq=?, ingested_at=?, prev_answer=? WHERE input_hash=?",
                        (*values, source, line, seq, now, old["answer"], ann.input_hash))
                    stats["updated"] += 1
            for source, line, error, raw in invalid:
                raw_bytes = raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw)
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO invalid (source, line, digest, error, excerpt, at) VALUES (?,?,?,?,?,?)",
                    (source, line, hashlib.sha256(raw_bytes).hexdigest(), error,
                     raw_bytes[:EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS], now))
                stats["invalid"] += cursor.rowcount
            if state is not None:
                conn.execute("INSERT INTO sources VALUES (?,?,?) ON CONFLICT (name) DO UPDATE "
                             "SET state = excluded.state, updated_at = excluded.updated_at",
                             (name, json.dumps(state, sort_keys=True), now))
        return stats

    def forget_source(self, name: str) -> None:
        """Drop the read position of ``name`` so that it is read again from the start (harmless: dedup)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM sources WHERE name = ?", (name,))

    # ------------------------------------------------------------------------------------------------- reading

    def source_state(self, name: str) -> dict | None:
        row = self._query("SELECT state FROM sources WHERE name = ?", (name,))
        return json.loads(row[0]["state"]) if row else None

    def counts(self) -> dict[str, int]:
        """``accepted``, ``rejected``, ``ignored`` (current answers per input) and ``invalid`` (set-aside lines)."""
        rows = {r["answer"]: r["n"] for r in self._query(
            "SELECT answer, COUNT(*) AS n FROM annotations GROUP BY answer")}
        invalid = self._query("SELECT COUNT(*) AS n FROM invalid")[0]["n"]
        return {"accepted": rows.get("accept", 0), "rejected": rows.get("reject", 0),
                "ignored": rows.get("ignore", 0), "invalid": invalid}

    def max_seq(self) -> int:
        return self._query("SELECT COALESCE(MAX(seq), 0) AS s FROM annotations")[0]["s"]

    def accepted_changes_since(self, seq: int) -> int:
        """Inputs whose training data changed after ``seq``: accepted now, or accepted before their last change."""
        return self._query(
            "SELECT COUNT(*) AS n FROM annotations WHERE seq > ? AND (answer = 'accept' OR prev_answer = 'accept')",
            (seq,))[0]["n"]

    def accepted(self) -> list[dict]:
        """The training set, ordered by input hash (stable): input_hash, image_path, width, height, boxes, ..."""
        return [
            {"input_hash": r["input_hash"], "task_hash": r["task_hash"], "image_path": r["image_path"],
             "width": r["width"], "height": r["height"], "boxes": json.loads(r["boxes"]),
             "timestamp": r["timestamp"], "seq": r["seq"]}
            for r in self._query("SELECT * FROM annotations WHERE answer = 'accept' ORDER BY input_hash")
        ]

    def invalid_items(self, limit: int = 20) -> list[dict]:
        """The most recently set-aside lines first: source, line, error, excerpt, at."""
        return [dict(r) for r in self._query(
            "SELECT source, line, error, excerpt, at FROM invalid ORDER BY at DESC, id DESC LIMIT ?", (limit,))]

    def answered_hashes(self) -> set[str]:
        """Input hashes answered in any way (accept, reject or ignore)."""
        return {r["input_hash"] for r in self._query("SELECT input_hash FROM annotations")}

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()
