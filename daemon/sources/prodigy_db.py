"""Prodigy's SQLite database, opened read-only, and the schema odal reads from it checked (names each gap).

Prodigy's schema (v1.6+, peewee): ``dataset(id, name UNIQUE, created, meta, session)``,
``example(id, input_hash, task_hash, content)`` and ``link(id, example_id, dataset_id)``; not a public contract.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from odal.common.errors import SchemaError

SCHEMA = {
    "dataset": ("id", "name", "created", "meta", "session"),
    "example": ("id", "input_hash", "task_hash", "content"),
    "link": ("id", "example_id", "dataset_id"),
}


def connect_readonly(db_path: Path, timeout: float = 1.0) -> sqlite3.Connection:
    """A read-only connection (``mode=ro`` URI): odal never writes to Prodigy's database."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise SchemaError(f"Prodigy database {db_path} does not exist")
    uri = f"file:{quote(str(db_path.absolute()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.text_factory = bytes  # a TEXT value that is not UTF-8 must not make every later row unreadable
    return conn


def check_schema(db_path: Path) -> None:
    """Raise :class:`SchemaError` naming each missing table or column of the schema odal reads.

    Extra tables and columns are fine.  A locked database raises ``sqlite3.OperationalError`` (try again).
    """
    conn = connect_readonly(db_path)
    try:
        check_open(conn, db_path)
    finally:
        conn.close()


def check_open(conn: sqlite3.Connection, db_path: Path) -> None:
    """:func:`check_schema` on an open connection."""
    problems = []
    try:
        for table, columns in SCHEMA.items():
            found = {row[1].decode("utf-8", "replace") for row in conn.execute(f"PRAGMA table_info({table})")}
            if not found:
                problems.append(f"table {table} is missing")
                continue
            missing = [c for c in columns if c not in found]
            if missing:
                problems.append(f"table {table} lacks column(s) {', '.join(missing)} (has {', '.join(sorted(found))})")
    except sqlite3.OperationalError:
        raise  # locked: the caller decides
    except sqlite3.DatabaseError as error:
        raise SchemaError(f"Prodigy database {db_path} cannot be read: {error}") from error
    if problems:
        raise SchemaError(f"Prodigy database {db_path} does not have the schema odal reads: {'; '.join(problems)}")


def file_label(db_path: Path, dataset: str) -> str:
    """How logs and the set-aside list name this source (the database file and the dataset)."""
    return f"{db_path}#{dataset}"
