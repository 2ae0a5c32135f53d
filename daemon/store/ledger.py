"""The durable ledger of annotations: one SQLite file in the work dir, written only in whole transactions.

Each input (``_input_hash``) has one row holding its newest answer; ``accept`` rows are the training set,
``reject``/``ignore`` rows record that the image was seen.  Lines that cannot be used are kept in ``invalid``.
``sources`` holds how far each export file or database has been read, written in the same transaction as the rows
it covers, so a crash never loses a record nor counts one twice (re-reading is harmless: upserts are idempotent).

``seq`` is a change counter: every inserted or changed annotation row gets the next value, so "what changed since
the last round" is a range query.  Other modules keep their own tables in the same file; this module creates only
its own (``IF NOT EXISTS``) and versions them in ``ledger_meta``.

A set-aside line is not final: a line whose only problem is its image (missing, empty, not decodable yet) keeps
the full line and the image path it waits for, and :meth:`Ledger.commit` can replace such rows when the line is
tried again; a source read again from its start drops its old set-aside rows (each line still bad is set aside
again), so the list always describes the sources as they are now.  A set-aside line whose ``_input_hash`` could be
read also leaves the list when a later line of the same source (a corrected answer) is ingested for that input.
Text from outside (paths, messages) is stored as valid UTF-8 whatever it holds (lone surrogates are escaped).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from odal.daemon.store import db as store
from odal.daemon.sources.prodigy_format import Annotation

SCHEMA_VERSION = 3
EXCERPT_CHARS = 300
WAITING_LINE_BYTES = 1 << 20  # longer lines waiting for an image are kept as excerpts only

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
    image TEXT,
    raw BLOB,
    input_hash TEXT,
    UNIQUE (source, line, digest)
);
CREATE INDEX IF NOT EXISTS invalid_image ON invalid (image) WHERE image IS NOT NULL;
CREATE INDEX IF NOT EXISTS invalid_input ON invalid (input_hash) WHERE input_hash IS NOT NULL;
CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
"""

# (annotation, image_path, width, height, source, line)
AnnotationRow = tuple[Annotation, "str | Path | None", "int | None", "int | None", str, int]
# (source, line, error, raw line, image the line waits for or None[, the line's input hash or None])
InvalidRow = tuple
# schema version -> statements that bring the previous version's tables to it
_MIGRATIONS = {2: ("ALTER TABLE invalid ADD COLUMN image TEXT", "ALTER TABLE invalid ADD COLUMN raw BLOB"),
               3: ("ALTER TABLE invalid ADD COLUMN input_hash TEXT",)}


class Ledger:
    """The annotations ledger at ``path``: one connection, to be used from one thread at a time."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open (creating or migrating it) the ledger at ``path``; ``readonly`` (``odal status``) writes nothing:
        it needs no write permission and leaves an older schema for the daemon to migrate."""
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            self._conn = store.connect(self.path, readonly=True, timeout=10)
            self.schema = self._schema_version(self._conn)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = store.connect(self.path)
        with self._transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            found = self._schema_version(conn)
            if found is not None:
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value", (str(SCHEMA_VERSION),))
        self.schema = SCHEMA_VERSION

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        """The stored schema version (None for a new file); refuses a ledger written by a newer odal."""
        try:
            row = conn.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # read-only open of a file that has no tables yet
            return None
        found = int(row["value"]) if row else None
        if found is not None and found > SCHEMA_VERSION:
            raise RuntimeError(f"ledger {self.path} has schema {found}, newer than this odal's {SCHEMA_VERSION}")
        return found

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
               invalid: Iterable[InvalidRow] = (), *, clear_invalid: str | None = None,
               replace_invalid: Iterable[int] = ()) -> dict:
        """Write rows, set-aside lines and the state of source ``name`` in ONE transaction; returns counts.

        An annotation replaces the stored one of the same input only if its ``_timestamp`` is >= the stored one
        (ties: the one read later wins); an identical re-read changes nothing.  Before anything is written, the
        set-aside rows of source ``clear_invalid`` (a source read again from its start) and the rows with the ids
        ``replace_invalid`` (lines being tried again) are dropped.  Stats: ``inserted``, ``updated``,
        ``unchanged``, ``stale`` (older than the stored answer), ``invalid`` (newly set aside), ``cleared``
        (set-aside rows dropped, also those superseded by a later line of the same input), and ``new_accept``,
        ``new_reject``, ``new_ignore``: the inserted or updated rows by answer (what a metric may count; a line
        read again adds nothing).
        """
        stats = {"inserted": 0, "updated": 0, "unchanged": 0, "stale": 0, "invalid": 0, "cleared": 0,
                 "new_accept": 0, "new_reject": 0, "new_ignore": 0}
        now = time.time()
        name = _text(name)
        with self._transaction() as conn:
            if clear_invalid is not None:
                stats["cleared"] += conn.execute("DELETE FROM invalid WHERE source = ?",
                                                 (_text(clear_invalid),)).rowcount
            for row_id in replace_invalid:
                stats["cleared"] += conn.execute("DELETE FROM invalid WHERE id = ?", (row_id,)).rowcount
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM annotations").fetchone()[0]
            written = []  # (input_hash, source, line) of each good line, for the set-aside lines it supersedes
            for ann, image_path, width, height, source, line in annotations:
                source = _text(source)
                written.append((ann.input_hash, source, line))
                values = (ann.task_hash, ann.timestamp, ann.answer,
                          None if image_path is None else _text(str(image_path)), width, height, _boxes_json(ann))
                old = conn.execute(
                    "SELECT task_hash, timestamp, answer, image_path, width, height, boxes FROM annotations "
                    "WHERE input_hash = ?", (ann.input_hash,)).fetchone()
                if old is None:
                    seq += 1
                    conn.execute("INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
                                 (ann.input_hash, *values, source, line, seq, now))
                    stats["inserted"] += 1
                    stats["new_" + ann.answer] += 1
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
                    stats["new_" + ann.answer] += 1
            for source, line, error, raw, image, *more in invalid:
                input_hash = more[0] if more else None
                raw_bytes = raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw)
                keep = raw_bytes if image is not None and len(raw_bytes) <= WAITING_LINE_BYTES else None
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO invalid (source, line, digest, error, excerpt, at, image, raw, input_hash) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    (_text(source), line, hashlib.sha256(raw_bytes).hexdigest(), _text(error),
                     raw_bytes[:EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS], now,
                     _text(image) if keep is not None else None, keep, input_hash))
                stats["invalid"] += cursor.rowcount
            for input_hash, source, line in written:  # a corrected answer appended later replaces the bad line
                stats["cleared"] += conn.execute(
                    "DELETE FROM invalid WHERE input_hash = ? AND source = ? AND line < ?",
                    (input_hash, source, line)).rowcount
            if state is not None:
                conn.execute("INSERT INTO sources VALUES (?,?,?) ON CONFLICT (name) DO UPDATE "
                             "SET state = excluded.state, updated_at = excluded.updated_at",
                             (name, json.dumps(state, sort_keys=True), now))
        return stats

    def forget_source(self, name: str) -> None:
        """Drop the read position of ``name`` so that it is read again from the start (harmless: dedup)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM sources WHERE name = ?", (name,))

    def drop_invalid_except(self, sources: Iterable[str]) -> int:
        """Drop the set-aside rows of every source not in ``sources`` (files deleted, a source no longer configured);
        returns how many."""
        keep = sorted(set(sources))
        with self._transaction() as conn:
            marks = ",".join("?" * len(keep))
            return conn.execute(f"DELETE FROM invalid WHERE source NOT IN ({marks})", keep).rowcount

    def forget_all_sources(self) -> list[str]:
        """Drop every read position (``odal retry``): each source is read again from its start; returns their names."""
        with self._transaction() as conn:
            names = [r["name"] for r in conn.execute("SELECT name FROM sources ORDER BY name")]
            conn.execute("DELETE FROM sources")
        return names

    # ------------------------------------------------------------------------------------------------- reading

    def known(self, ann: Annotation) -> tuple[str | None, int | None, int | None] | None:
        """(image_path, width, height) stored for exactly this answer (same task, timestamp, answer and boxes), else
        None: a source read again need not decode the image of a line it already ingested."""
        rows = self._query("SELECT image_path, width, height FROM annotations WHERE input_hash = ? AND task_hash IS ? "
                           "AND timestamp = ? AND answer = ? AND boxes = ?",
                           (ann.input_hash, ann.task_hash, ann.timestamp, ann.answer, _boxes_json(ann)))
        return (rows[0]["image_path"], rows[0]["width"], rows[0]["height"]) if rows else None

    def source_state(self, name: str) -> dict | None:
        row = self._query("SELECT state FROM sources WHERE name = ?", (_text(name),))
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
        """The most recently set-aside lines first: source, line, error, excerpt, at, image (None or waited for)."""
        return [dict(r) for r in self._query(
            f"SELECT source, line, error, excerpt, at, {'image' if (self.schema or 0) >= 2 else 'NULL AS image'} "
            "FROM invalid ORDER BY at DESC, id DESC LIMIT ?",
            (limit,))]

    def waiting_for(self, image: str) -> list[dict]:
        """Set-aside lines that only wait for the image file ``image`` (resolved path): id, source, line, raw."""
        return [dict(r) for r in self._query(
            "SELECT id, source, line, raw FROM invalid WHERE image = ? ORDER BY source, line", (image,))]

    def answered_hashes(self) -> set[str]:
        """Input hashes answered in any way (accept, reject or ignore)."""
        return {r["input_hash"] for r in self._query("SELECT input_hash FROM annotations")}

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()


def _text(value: str | None) -> str | None:
    """``value`` as text SQLite can store: a lone surrogate (a file name that is not UTF-8, a hostile record) is
    escaped instead of failing the whole transaction."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _boxes_json(ann: Annotation) -> str:
    return json.dumps([box.as_dict() for box in ann.boxes])
