"""Read Prodigy ``db-out`` JSONL exports into the ledger, incrementally, from where the last read stopped.

Called from the daemon's main loop when the watcher reports a change (and at start, on reload and on retry).  Only complete lines (ending in ``\\n``)
are read; a partial last line waits for the next call.  A file rewritten by a fresh ``db-out`` (other inode,
shorter than the stored offset, or different first bytes) is read again from the start, which is harmless because
the ledger deduplicates.  A bad line is logged (``record_set_aside`` with file and line), kept in the ledger's
``invalid`` table, and reading goes on.  A source read from its start replaces its set-aside rows, and
:func:`retry_waiting` tries again the lines that only waited for an image file once that file appears.  Rows and
the read position are committed together every :data:`CHUNK_LINES` lines, so memory stays flat and a crash loses
nothing.

Guarded boundaries: *any* exception from one line (parsing, its image, or writing its row) sets that line aside,
logged once as ``record_set_aside`` with file, line and ``error_class``; any other exception from one source is
logged once as ``source_failed`` and the source is tried again on its next change.  Only the ledger's own storage
errors (a full disk, an I/O error) go up to the caller.  A line longer than
:data:`~odal.daemon.sources.limits.MAX_LINE_BYTES` is set aside without being held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable
from pathlib import Path


from odal.daemon.system.degraded import is_disk_error
from odal.common.errors import InvalidRecord
from odal.daemon.store.ledger import Ledger
from odal.daemon.sources.limits import MAX_ERROR_CHARS, MAX_LINE_BYTES
from odal.daemon.sources.prodigy_format import open_image, parse_record
from odal.daemon.system import log as logs

log = logs.get("odal.ingest")

CHUNK_LINES = 500
HEAD_BYTES = 4096
_STAT_KEYS = ("lines", "accept", "reject", "ignore", "set_aside", "inserted", "updated", "unchanged", "stale",
              "invalid", "cleared", "new_accept", "new_reject", "new_ignore")
_EXCERPT_BYTES = 4096  # what is kept of a line in memory until its chunk is committed, for setting it aside later


def storage_error(error: BaseException) -> bool:
    """An error of the ledger's storage (disk full, I/O, a corrupt file), not of the line being written: the
    caller handles it (retry later); any other error while writing a row is that row's."""
    return isinstance(error, (OSError, sqlite3.OperationalError)) or type(error) is sqlite3.DatabaseError


def new_stats() -> dict:
    return dict.fromkeys(_STAT_KEYS, 0)


def add_stats(total: dict, more: dict) -> dict:
    for key in _STAT_KEYS:
        total[key] = total.get(key, 0) + more.get(key, 0)
    return total


class RecordBatch:
    """Records of one source on their way to the ledger: parsed, image checked, or set aside; then committed.

    ``file`` is what logs and the ``invalid`` table name as the source (a path, or a database and dataset).
    """

    def __init__(self, ledger: Ledger, labels: Collection[str], data_dir: Path, blob_dir: Path, file: str,
                 heartbeat: Callable[[], None] | None = None, **log_context) -> None:
        self.ledger, self.labels = ledger, frozenset(labels)
        self.data_dir, self.blob_dir = Path(data_dir), Path(blob_dir)
        self.file = file
        self._heartbeat = heartbeat
        self.log = log.bind(file=file, **log_context)
        self.stats = new_stats()
        self._rows: list = []
        self._excerpts: list[bytes | str] = []  # the start of each row's line, in case writing the row fails
        self._invalid: list = []

    def __len__(self) -> int:
        return len(self._rows) + len(self._invalid)

    def add_line(self, raw: bytes | str, line: int) -> None:
        """One JSON text (a line of a file, an example's content); sets it aside if it cannot be used.

        The guarded boundary of one line: nothing raised while reading it escapes (but a heartbeat's own
        ``BaseException``, e.g. the daemon stopping)."""
        self.stats["lines"] += 1
        if self._heartbeat is not None:  # a long read (a big first export) still tells systemd the daemon lives
            self._heartbeat()
        try:
            self._add_line(raw, line)
        except InvalidRecord as error:
            self.set_aside(raw, line, str(error), error.image, error.input_hash)
        except Exception as error:  # a bug must not stop the other records nor crash the daemon
            if is_disk_error(error):  # e.g. a data URI's image cannot be stored: not the line's fault, retried
                raise
            self.set_aside(raw, line, f"internal error: {type(error).__name__}: {error}", unexpected=error)

    def too_long(self, start: bytes, line: int, size: int) -> None:
        """Set aside a line longer than :data:`MAX_LINE_BYTES`, of which only ``start`` was read."""
        self.stats["lines"] += 1
        self.set_aside(start[:_EXCERPT_BYTES], line, f"line is longer than {MAX_LINE_BYTES} bytes "
                       f"({size if size > MAX_LINE_BYTES else 'more'} bytes); not read")

    def _add_line(self, raw: bytes | str, line: int) -> None:
        if len(raw) > MAX_LINE_BYTES:
            raise InvalidRecord(f"line is longer than {MAX_LINE_BYTES} bytes ({len(raw)}); not read")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as error:
            raise InvalidRecord(f"line is not UTF-8: {error}") from error
        try:
            obj = json.loads(text)
        except RecursionError as error:  # e.g. [[[[...]]]] nested deeper than Python's stack
            raise InvalidRecord("malformed JSON: nested too deeply") from error
        except ValueError as error:  # JSONDecodeError, and an integer past Python's 4300-digit limit
            raise InvalidRecord(f"malformed JSON: {error}") from error
        self._add_object(obj, line)
        self._excerpts.append(raw[:_EXCERPT_BYTES])

    def _add_object(self, obj: object, line: int) -> None:
        if not isinstance(obj, dict):
            raise InvalidRecord(f"line is not a JSON object but {type(obj).__name__}")
        ann = parse_record(obj, self.labels)
        try:
            self._add_annotation(ann, line)
        except InvalidRecord as error:
            error.input_hash = ann.input_hash
            raise

    def _add_annotation(self, ann, line: int) -> None:
        known = self.ledger.known(ann)
        if known is not None and (known[0] is None or Path(known[0]).is_file()):
            # Read before, unchanged since (a source read again): its image was checked then.
            self.stats[ann.answer] += 1
            self._rows.append((ann, *known, self.file, line))
            return
        image_path, width, height = None, ann.width, ann.height
        try:
            image = open_image(ann, self.data_dir, self.blob_dir)
        except InvalidRecord as error:
            if ann.answer == "accept":
                raise
            # A reject/ignore is not trained on: keep the answer (the image was seen) without the image.
            self.log.warning("image_unavailable", line=line, input_hash=ann.input_hash, answer=ann.answer,
                             error=str(error))
        else:
            image_path, width, height = image.path, image.width, image.height
            if ann.width and ann.height and abs(ann.width / ann.height - width / height) > 0.01 * width / height:
                self.log.warning("image_size_mismatch", line=line, record=f"{ann.width}x{ann.height}",
                                 image=f"{width}x{height}", path=str(image.path))
        self.stats[ann.answer] += 1
        self._rows.append((ann, image_path, width, height, self.file, line))

    def set_aside(self, raw: bytes | str, line: int, error: str, image: str | None = None,
                  input_hash: str | None = None, unexpected: Exception | None = None) -> None:
        """Log the line once (file, line, error, ``error_class``) and keep it in the set-aside list.

        ``unexpected``: the exception that was not an :class:`InvalidRecord` (a bug); its traceback is logged."""
        self.stats["set_aside"] += 1
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + "..."
        fields = {"error_class": type(unexpected).__name__ if unexpected is not None else "InvalidRecord"}
        if image is not None:
            fields["waits_for"] = image
        self.log.error("record_set_aside", line=line, error=error, exc_info=unexpected, **fields)
        self._invalid.append((self.file, line, error, raw, image, input_hash))

    def commit(self, name: str, state: dict | None, *, restart: bool = False, replace: Iterable[int] = ()) -> None:
        """Write the collected rows and ``state`` of source ``name`` in one transaction, then start afresh.

        ``restart``: the source is being read from its start, so its earlier set-aside rows are dropped in the
        same transaction; ``replace``: ids of set-aside rows whose lines this batch holds again.  If a row cannot
        be written (a bug, a value SQLite refuses), the rows are written one by one and that line is set aside."""
        clear = self.file if restart else None
        try:
            written = self.ledger.commit(name, state, self._rows, self._invalid, clear_invalid=clear,
                                         replace_invalid=replace)
        except Exception as error:  # noqa: BLE001 - storage errors go up; any other is one row's, found below
            if storage_error(error):
                raise
            written = self._commit_one_by_one(name, state, clear, replace)
        add_stats(self.stats, written)
        self._rows, self._excerpts, self._invalid = [], [], []

    def _commit_one_by_one(self, name: str, state: dict | None, clear: str | None, replace: Iterable[int]) -> dict:
        total = self.ledger.commit(name, None, clear_invalid=clear, replace_invalid=replace)
        for row, excerpt in zip(self._rows, self._excerpts):
            try:
                add_stats(total, self.ledger.commit(name, None, [row]))
            except Exception as error:  # noqa: BLE001
                if storage_error(error):
                    raise
                self.stats[row[0].answer] -= 1
                self.set_aside(excerpt, row[5], f"internal error: {type(error).__name__}: {error}",
                               input_hash=row[0].input_hash, unexpected=error)
        for row in self._invalid:
            try:
                add_stats(total, self.ledger.commit(name, None, invalid=[row]))
            except Exception as error:  # noqa: BLE001 - still listed, with a message the ledger can store
                if storage_error(error):
                    raise
                self.log.error("set_aside_unstorable", line=row[1], error_class=type(error).__name__)
                add_stats(total, self.ledger.commit(name, None, invalid=[
                    (row[0], row[1], f"internal error: {type(error).__name__}", b"", None)]))
        add_stats(total, self.ledger.commit(name, state))
        return total


# ------------------------------------------------------------------------------------------------ export files


def source_label(path: Path) -> str:
    """How the ledger (read position, set-aside list) and the logs name an export file: its absolute path."""
    return str(Path(path).absolute())


def ingest_export_file(path: Path, ledger: Ledger, labels: Collection[str], data_dir: Path, blob_dir: Path,
                       heartbeat: Callable[[], None] | None = None) -> dict:
    """Read the new complete lines of one ``db-out`` file into ``ledger``; returns counts.

    The guarded boundary of one export file: raises only the ledger's storage errors (:func:`storage_error`).

    Stats: ``lines`` read, ``accept``/``reject``/``ignore`` among them, ``set_aside`` bad lines, the ledger's
    ``inserted``/``updated``/``unchanged``/``stale``/``invalid`` (newly set aside), and ``rewritten``.
    """
    path = Path(path).absolute()
    name = source_label(path)
    batch = RecordBatch(ledger, labels, data_dir, blob_dir, name, heartbeat)
    stats = batch.stats
    stats["rewritten"] = False
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        log.warning("export_missing", file=str(path))
        return stats
    except OSError as error:
        log.error("export_unreadable", file=str(path), error=str(error))
        return stats
    with handle:
        try:
            _read_export(handle, name, batch, ledger.source_state(name) or {})
        except Exception as error:  # noqa: BLE001 - what was committed stays; the rest is read on the next call
            if is_disk_error(error):  # the work dir cannot be written: the daemon degrades and retries
                raise
            if isinstance(error, OSError):  # reading the export (the ledger raises sqlite3 errors)
                log.error("export_unreadable", file=str(path), error=str(error))
            elif storage_error(error):
                raise
            else:
                log.error("source_failed", file=str(path), error=f"{type(error).__name__}: {error}",
                          error_class=type(error).__name__, exc_info=True)
    return stats


def _read_export(handle, name: str, batch: RecordBatch, state: dict) -> None:
    fd = handle.fileno()
    st = os.fstat(fd)
    offset, line = int(state.get("offset", 0)), int(state.get("line", 0))
    if state and _rewritten(fd, st, state):
        batch.log.info("export_rewritten", previous_offset=offset, size=st.st_size)
        batch.stats["rewritten"] = True
        offset, line = 0, 0
    restart = offset == 0  # the first commit replaces this file's set-aside rows
    handle.seek(offset)
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if len(raw) > MAX_LINE_BYTES:  # too long to read: skip it in bounded pieces, set it aside
            size = _skip_line(handle, len(raw))
            if size is None:  # not complete yet
                break
            line += 1
            offset += size
            batch.too_long(raw, line, size)
        elif not raw.endswith(b"\n"):  # end of file, or a partial last line still being written
            break
        else:
            line += 1
            offset += len(raw)
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.strip():
                batch.add_line(raw.rstrip(b"\r\n"), line)
        if len(batch) >= CHUNK_LINES:
            batch.commit(name, _state(fd, st, offset, line), restart=restart)
            restart = False
    new_state = _state(fd, st, offset, line)
    if len(batch) or new_state != state or restart:
        batch.commit(name, new_state, restart=restart)


def _skip_line(handle, read: int) -> int | None:
    """Read past the rest of a too-long line, 1 MiB at a time; its whole size, or None if it has no end yet."""
    while True:
        piece = handle.readline(1 << 20)
        read += len(piece)
        if piece.endswith(b"\n"):
            return read
        if not piece:
            return None


def _state(fd: int, st: os.stat_result, offset: int, line: int) -> dict:
    head_len = min(offset, HEAD_BYTES)
    return {"dev": st.st_dev, "inode": st.st_ino, "offset": offset, "line": line, "head_len": head_len,
            "head_sha256": hashlib.sha256(os.pread(fd, head_len, 0)).hexdigest()}


def _rewritten(fd: int, st: os.stat_result, state: dict) -> bool:
    if (st.st_dev, st.st_ino) != (state.get("dev"), state.get("inode")):
        return True
    if st.st_size < int(state.get("offset", 0)):
        return True
    head_len = int(state.get("head_len", 0))
    return hashlib.sha256(os.pread(fd, head_len, 0)).hexdigest() != state.get("head_sha256")


# ------------------------------------------------------------------------------------------- lines waiting for images


def retry_waiting(image: str | Path, ledger: Ledger, labels: Collection[str], data_dir: Path, blob_dir: Path,
                  heartbeat: Callable[[], None] | None = None) -> dict:
    """Try again the set-aside lines that waited for the image file ``image`` (it appeared or changed).

    Each line goes through the same path as when it was first read; its old set-aside row is replaced in the
    same transaction (by the annotation, or by a new set-aside row if it is still not usable).  Returns the stats
    summed over the sources involved; ``retried`` counts the lines.
    """
    try:
        resolved = str(Path(image).resolve())
    except (OSError, RuntimeError):
        return new_stats() | {"retried": 0}
    waiting = ledger.waiting_for(resolved)
    total = new_stats() | {"retried": len(waiting)}
    by_source: dict[str, list[dict]] = {}
    for row in waiting:
        by_source.setdefault(row["source"], []).append(row)
    for source, rows in by_source.items():
        batch = RecordBatch(ledger, labels, data_dir, blob_dir, source, heartbeat)
        for row in rows:
            batch.add_line(row["raw"], row["line"])
        batch.commit(source, None, replace=[row["id"] for row in rows])
        add_stats(total, batch.stats)
    return total
