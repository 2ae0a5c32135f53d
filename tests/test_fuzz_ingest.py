"""Property-based fuzzing of the annotation sources: hostile lines interleaved with good ones go through the real
ingest path (the functions the daemon calls, a real ledger, real images) and the invariants hold.

Invariants, for every generated batch: no exception escapes; every good line is in the ledger exactly once, under
its own line number; every bad line is set aside with its line number and logged once; a hostile record that may be
usable is one of the two, never lost; reading the source again from its start changes nothing and counts nothing.

``make test`` runs a few hundred examples.  The long mode runs 100k+ lines::

    ODAL_FUZZ_LONG=1 nice -n 10 .venv/bin/python -m pytest tests/test_fuzz_ingest.py -q -s
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hostile_lines import LABELS, Line, batches, dumps, good_record
from odal.daemon.sources import datasets
from odal.daemon.handlers import ingest as ingest_module
from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.handlers.ingest_db import ingest_prodigy_db
from odal.daemon.store.ledger import Ledger
from test_ingest_db import PRODIGY_SCHEMA

LONG = os.environ.get("ODAL_FUZZ_LONG") == "1"
MIN_LINES, MAX_LINES = (30, 60) if LONG else (1, 12)  # lines per batch


def _fuzz(long_examples: int):
    examples = int(os.environ.get("ODAL_FUZZ_EXAMPLES", long_examples)) if LONG else 120
    return settings(max_examples=examples, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


LONG_MODE = pytest.mark.timeout(0 if LONG else 600)  # the long mode runs for an hour on a busy machine

# On a tmpfs when there is one: each example's ledger is a real SQLite file, without paying the disk's fsyncs.
_ROOT = Path(tempfile.mkdtemp(prefix="odal-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
atexit.register(shutil.rmtree, _ROOT, True)
ITEMS = datasets.generate_shapes(_ROOT / "data", 3, seed=7)  # real images the good lines name
LINES_RUN = {"export": 0, "db": 0}


def _good(n: int, answer: str = "accept") -> Line:
    record = good_record(ITEMS, n, n, answer)
    return Line(dumps(record), "good", str(record["_input_hash"]))


def _bad(raw: bytes) -> Line:
    return Line(raw, "bad")


def _record(n: int, **changes) -> bytes:
    record = dict(good_record(ITEMS, n, n, "accept"), _input_hash=8_000_000_000 + n)
    record.update(changes)
    return dumps(record)


# Regressions: each was a crash, a lost good line or a wrong set-aside found by this fuzzer or by issue 10.
REGRESSIONS = [
    [_good(0), _bad(b'{"_input_hash": ' + b"1" * 5000 + b', "answer": "accept"}'), _good(2)],  # ValueError
    [_good(0), _bad(_record(1, answer="reject", width=1e300, image="gone.jpg", path="gone.jpg", meta={})),
     _good(2)],  # OverflowError: SQLite INTEGER
    [_good(0), _bad(_record(1, _input_hash="9" * 5000)), _good(2)],  # int() past 4300 digits
    [_bad(_record(0, _timestamp=10 ** 400)), _good(1)],  # float(int) overflow
    [_bad(_record(0, width=0.3)), _good(1)],  # rounded to 0 px: ZeroDivisionError in the boxes
    [_bad(_record(0, spans=[{"label": "disc", "points": [[10 ** 400, 1], [5, 5]]}])), _good(1)],
    [_bad(_record(0, image="\udcff.jpg", path="\udcff.jpg", meta={})), _good(1)],  # a lone surrogate in the
    # path the line waits for, stored in the ledger: UnicodeEncodeError out of the commit
    [_bad(_record(0, image="\ud800.jpg", path="x", meta={})), _good(1)],
    [_bad(b"[" * 100_000 + b"]" * 100_000), _good(1)],
]


def _count(source: str, lines: int) -> None:
    before = LINES_RUN[source]
    LINES_RUN[source] += lines
    if LONG and before // 10_000 != LINES_RUN[source] // 10_000:
        print(f"fuzzed {source} lines: {LINES_RUN[source]}", flush=True)


def _write(path: Path, lines: list[Line]) -> None:
    with open(path, "ab") as out:
        out.write(b"".join(line.raw + b"\n" for line in lines))


def _annotations(ledger_path: Path) -> dict[str, tuple[str, int]]:
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        return {h: (s, n) for h, s, n in conn.execute("SELECT input_hash, source, line FROM annotations")}
    finally:
        conn.close()


def _check(batch: list[Line], ledger: Ledger, source: str, lines: list[int], logs: list[dict]) -> None:
    """The invariants over one source whose batch lines sit at ``lines`` (file line numbers or example ids)."""
    rows = _annotations(ledger.path)
    set_aside = {(i["source"], i["line"]) for i in ledger.invalid_items(10 ** 6)}
    ingested = 0
    for line, number in zip(batch, lines):
        where = (source, number)
        if line.kind == "good":
            assert rows.get(line.input_hash) == where and where not in set_aside, (number, line.raw[:200])
        elif line.kind == "bad":
            assert where in set_aside and rows.get(line.input_hash) != where, (number, line.raw[:200])
        else:  # usable or not, never lost and never both
            assert (rows.get(line.input_hash) == where) != (where in set_aside), (number, line.raw[:200])
        ingested += rows.get(line.input_hash) == where
    assert len(rows) == ingested  # nothing else in the ledger: each good line exactly once
    assert len(set_aside) == len(batch) - ingested
    events = [(e["file"], e["line"]) for e in logs if e["event"] == "record_set_aside"]
    assert sorted(events) == sorted(set_aside)  # each logged once
    assert not [e for e in logs if e["event"] in ("source_failed", "export_unreadable", "prodigy_db_unreadable")]


@LONG_MODE
@_fuzz(2400)  # ~108k lines in the long mode
@given(batch=batches(ITEMS, MAX_LINES, MIN_LINES), cut=st.floats(0, 1))
@example(batch=REGRESSIONS[0], cut=0.5)
@example(batch=REGRESSIONS[1], cut=0.0)
@example(batch=REGRESSIONS[2], cut=1.0)
@example(batch=REGRESSIONS[3], cut=0.5)
@example(batch=REGRESSIONS[4], cut=0.5)
@example(batch=REGRESSIONS[5], cut=0.5)
@example(batch=REGRESSIONS[6], cut=0.5)
@example(batch=REGRESSIONS[7], cut=0.5)
@example(batch=REGRESSIONS[8], cut=0.5)
def test_hostile_export_lines_never_escape_and_every_good_line_is_ingested_once(batch, cut):
    _count("export", len(batch))
    with tempfile.TemporaryDirectory(dir=_ROOT) as tmp:
        export = Path(tmp) / "annotations.jsonl"
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        try:
            split = int(len(batch) * cut)
            with capture_logs() as logs:
                _write(export, batch[:split])  # appended in two sessions, read after each
                ingest_export_file(export, ledger, LABELS, ITEMS[0].image.parent, Path(tmp) / "blobs")
                _write(export, batch[split:])
                ingest_export_file(export, ledger, LABELS, ITEMS[0].image.parent, Path(tmp) / "blobs")
            source = ingest_module.source_label(export)
            _check(batch, ledger, source, list(range(1, len(batch) + 1)), logs)
            counts = ledger.counts()
            ledger.forget_source(source)  # `odal retry`: read again from the start
            with capture_logs():
                again = ingest_export_file(export, ledger, LABELS, ITEMS[0].image.parent, Path(tmp) / "blobs")
            assert ledger.counts() == counts
            assert again["new_accept"] + again["new_reject"] + again["new_ignore"] == 0 and again["inserted"] == 0
        finally:
            ledger.close()


def _prodigy_db(path: Path, batch: list[Line], storage: list[str]) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(PRODIGY_SCHEMA + "INSERT INTO dataset VALUES (1, 'boxes', 0, x'7b7d', 0);")
    for n, (line, how) in enumerate(zip(batch, storage), 1):
        value = "CAST(? AS TEXT)" if how == "text" else "?"  # TEXT keeps the bytes as they are, UTF-8 or not
        conn.execute(f"INSERT INTO example VALUES (?, 0, 0, {value})", (n, line.raw))
        conn.execute("INSERT INTO link VALUES (?, ?, 1)", (n, n))
    conn.commit()
    conn.close()


@LONG_MODE
@_fuzz(700)  # ~31k rows in the long mode
@given(batch=batches(ITEMS, MAX_LINES, MIN_LINES),
       storage=st.lists(st.sampled_from(["text", "blob"]), min_size=MAX_LINES, max_size=MAX_LINES))
@example(batch=[_good(0), _bad(b'{"image": "\xff\xfe.jpg"}'), _good(2)], storage=["text"] * MAX_LINES)  # was: every
# later row unreadable ("Could not decode to UTF-8 column 'content'"), the dataset stuck for good
def test_hostile_rows_in_prodigys_database_never_escape_and_every_good_row_is_ingested_once(batch, storage):
    _count("db", len(batch))
    with tempfile.TemporaryDirectory(dir=_ROOT) as tmp:
        db = Path(tmp) / "prodigy.db"
        _prodigy_db(db, batch, storage)
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        try:
            with capture_logs() as logs:
                stats = ingest_prodigy_db(db, "boxes", ledger, LABELS, ITEMS[0].image.parent, Path(tmp) / "blobs")
            assert not stats.get("error") and not stats["locked"]
            _check(batch, ledger, f"{db}#boxes", list(range(1, len(batch) + 1)), logs)
        finally:
            ledger.close()


@pytest.fixture(autouse=True)
def _report_lines():
    yield
    if LONG:
        print(f"\nfuzzed lines so far: export {LINES_RUN['export']}, Prodigy database {LINES_RUN['db']}")

