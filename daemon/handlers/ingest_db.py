"""Read a Prodigy SQLite database's new examples of one dataset into the ledger, read-only.

Prodigy's schema (v1.6+, peewee): ``dataset(id, name UNIQUE, created, meta, session)``,
``example(id, input_hash, task_hash, content)`` with the whole task as JSON in ``content``, and
``link(id, example_id, dataset_id)``.  It is not a public contract, so odal.daemon.sources.prodigy_db checks it.  New
rows are those with ``example.id`` above the last one read, linked to the named dataset; their content goes through
the same code path as an export line (text is read as bytes, so content that is not UTF-8 is one bad line, not an
unreadable database).  A locked database is not an error: the daemon retries on the next change.  Like an export
file, one dataset is a guarded boundary: only the ledger's storage errors are raised.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from pathlib import Path


from odal.common.errors import SchemaError
from odal.daemon.handlers.ingest import CHUNK_LINES, RecordBatch, storage_error
from odal.daemon.sources.prodigy_db import check_open, connect_readonly, file_label
from odal.daemon.system.degraded import is_disk_error
from odal.daemon.store.ledger import Ledger
from odal.daemon.system import log as logs

log = logs.get("odal.ingest")

_NEW_ROWS = """
SELECT example.id, example.content FROM example
JOIN link ON link.example_id = example.id
JOIN dataset ON dataset.id = link.dataset_id
WHERE dataset.name = ? AND example.id > ?
ORDER BY example.id LIMIT ?
"""


def source_name(db_path: Path, dataset: str) -> str:
    """The key of the read position in the ledger's ``sources``."""
    return f"prodigy-db:{Path(db_path).absolute()}#{dataset}"


def ingest_prodigy_db(db_path: Path, dataset: str, ledger: Ledger, labels: Collection[str], data_dir: Path,
                      blob_dir: Path, timeout: float = 1.0, heartbeat: Callable[[], None] | None = None) -> dict:
    """Read the examples of ``dataset`` added since the last call; returns the same stats as an export file.

    Extra stats: ``locked`` (the database was busy; nothing more was read, retry later), ``restarted`` (ids went
    backwards, e.g. the dataset was dropped and recreated: read again from the start), ``error`` (another
    ``sqlite3.OperationalError``, logged).  Raises :class:`SchemaError` if the database is missing, is not a
    database, or its schema differs.
    """
    db_path = Path(db_path)
    name = source_name(db_path, dataset)
    batch = RecordBatch(ledger, labels, data_dir, blob_dir, file_label(db_path, dataset), heartbeat, dataset=dataset)
    stats = batch.stats
    stats.update(locked=False, restarted=False)
    conn = connect_readonly(db_path, timeout)
    try:
        check_open(conn, db_path)
        last_id = int((ledger.source_state(name) or {}).get("last_id", 0))
        newest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM example").fetchone()[0]
        if newest < last_id:
            batch.log.info("prodigy_db_restarted", last_id=last_id, newest=newest)
            stats["restarted"] = True
            last_id = 0
        restart = last_id == 0  # read from the start: the first commit replaces the dataset's set-aside rows
        while True:
            rows = conn.execute(_NEW_ROWS, (dataset, last_id, CHUNK_LINES)).fetchall()
            if not rows:
                break
            for example_id, content in rows:
                batch.add_line(content if isinstance(content, bytes) else str(content), example_id)
                last_id = example_id
            batch.commit(name, {"last_id": last_id}, restart=restart)
            restart = False
        if restart:
            batch.commit(name, {"last_id": 0}, restart=True)
    except sqlite3.OperationalError as error:  # rows not committed yet are read again next time
        if is_disk_error(error):  # the ledger's disk, not Prodigy's database: the daemon degrades and retries
            raise
        if "locked" in str(error) or "busy" in str(error):
            log.warning("prodigy_db_locked", file=str(db_path), dataset=dataset, error=str(error))
            stats["locked"] = True
        else:
            log.error("prodigy_db_unreadable", file=str(db_path), dataset=dataset, error=str(error))
            stats["error"] = str(error)
    except Exception as error:  # noqa: BLE001 - one source never stops the daemon; read again on the next change
        if storage_error(error) or isinstance(error, SchemaError):
            raise
        log.error("source_failed", file=str(db_path), dataset=dataset, error=f"{type(error).__name__}: {error}",
                  error_class=type(error).__name__, exc_info=True)
        stats["error"] = str(error)
    finally:
        conn.close()
    return stats
