"""The one way odal opens its workspace database (SQLite) and runs a write transaction.

Several modules keep tables in the same file (ledger, history, active-learning queue); each opens its own
connection here: WAL (readers never block the writer), ``synchronous=FULL`` (a committed transaction survives a
power cut), rows as ``sqlite3.Row``.  A connection is shared between threads only under its owner's lock.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

LEDGER_FILE = "ledger.sqlite"  # in the work dir: ledger, history and active-learning queue


def connect(path: Path, readonly: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False, timeout=timeout)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.row_factory = sqlite3.Row
    return conn


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` and re-raise; holds the owner's thread lock throughout."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock) -> None:
        self.conn, self.lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:  # e.g. "database or disk is full": the transaction must not stay open
                    self._rollback()
                    raise
            else:
                self._rollback()
        finally:
            self.lock.release()

    def _rollback(self) -> None:
        """ROLLBACK if a transaction is still open (SQLite rolls back by itself after some errors, such as a full
        disk; a second ROLLBACK would then raise and hide the error that matters)."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
