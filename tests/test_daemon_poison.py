"""The real daemon against poison input: one line, row or event that raises never stops it, at any start.

Issue 10: the catch-all around an event logged with a keyword named ``event`` (structlog's own first argument), so
the handler itself raised ``TypeError`` and the daemon exited, at every start while the line was in the export.
"""

from __future__ import annotations

import json
import time

from hypothesis import Phase, given, settings

from daemon_harness import DaemonProcess, append_records, make_workspace, odal_cli, query
from hostile_lines import batches
from odal.daemon.sources import datasets
from odal.daemon.commands.status import status_data
from test_fuzz_ingest import ITEMS, REGRESSIONS
from test_ingest_db import ProdigyDB


def _good(items, index: int, input_hash: int) -> dict:
    return dict(datasets.prodigy_record(items[index], items[index].image.name, timestamp=1000),
                _input_hash=input_hash)


POISON = [  # each one stopped the daemon for good (issue 10), or was found by the fuzzer
    '{"_input_hash": ' + "1" * 5000 + ', "answer": "accept", "image": "a.jpg"}',
    json.dumps({"_input_hash": 5, "answer": "reject", "width": 1e300, "height": 10, "image": "gone.jpg"}),
    json.dumps({"_input_hash": "9" * 5000, "answer": "accept", "image": "a.jpg"}),
    '{"_input_hash": 6, "_timestamp": 1' + "0" * 400 + ', "answer": "ignore", "image": "gone.jpg"}',
    json.dumps({"_input_hash": 7, "answer": "reject", "image": "\udcff.jpg"}),
]


def _accepted(config) -> set[str]:
    return {r["input_hash"] for r in query(config.parent / "work" / "ledger.sqlite",
                                           "SELECT input_hash FROM annotations WHERE answer = 'accept'")}


def _wait_accepted(config, daemon: DaemonProcess, input_hash: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while input_hash not in _accepted(config):
        assert time.monotonic() < deadline and daemon.alive(), f"{input_hash} was not ingested"
        time.sleep(0.1)


def test_poison_lines_in_the_export_never_stop_the_daemon_across_restarts_and_later_lines_come_in(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 3, seed=41)
    config = make_workspace(tmp_path / "ws", items, min_new=10 ** 9)
    export = config.parent / "exports" / "annotations.jsonl"
    append_records(export, [_good(items, 0, 100), *POISON, _good(items, 1, 101)])
    for start in range(2):  # the second start reads the whole export again (`odal retry` while stopped)
        with DaemonProcess(config) as daemon:
            assert daemon.wait_event("ingested", 60), daemon.events[-3:]
            time.sleep(0.5)
            assert daemon.alive() and _accepted(config) >= {"100", "101"}
            listed = sorted(i["line"] for i in status_data(config.parent)["set_aside"])
            assert listed == [2, 3, 4, 5]  # the reject of a missing image (line 6) is kept as seen
            set_aside = [e for e in daemon.events if e["event"] == "record_set_aside"]
            assert {e["file"] for e in set_aside} == {str(export)} and all("error" in e for e in set_aside)
            append_records(export, [_good(items, 2, 102 + start)])
            _wait_accepted(config, daemon, str(102 + start))
            assert daemon.terminate() == 0
        assert odal_cli("retry", "--workspace", str(config.parent)).returncode == 0
    assert _accepted(config) == {"100", "101", "102", "103"}


def test_an_event_that_raises_is_logged_once_naming_its_source_and_the_daemon_goes_on(tmp_path):
    """Prodigy's database replaced by a file of another kind while the daemon runs: every change of it raises
    (SchemaError); the event is logged with its source and error class, and the next good state is read."""
    items = datasets.generate_shapes(tmp_path / "images", 3, seed=42)
    config = make_workspace(tmp_path / "ws", items, min_new=10 ** 9)
    (tmp_path / "prodigy").mkdir()
    db = ProdigyDB(tmp_path / "prodigy" / "prodigy.db")
    db.add("boxes", _good(items, 0, 200))
    config.write_text(config.read_text().replace('export_dir = "exports"',
                                                 f'database = "{db.path}"\ndataset = "boxes"'))
    saved = db.path.read_bytes()
    with DaemonProcess(config) as daemon:
        assert daemon.wait_event("ingested", 60)
        db.path.write_bytes(b"this is not a database" * 100)
        failed = daemon.wait_event("event_failed", 30)
        assert failed is not None and failed["source"] == str(db.path) and failed["error_class"] == "SchemaError"
        assert failed["level"] == "error" and "exception" in failed
        time.sleep(0.5)
        assert daemon.alive()
        db.path.write_bytes(saved)
        db.add("boxes", _good(items, 1, 201))
        _wait_accepted(config, daemon, "201")
        assert _accepted(config) == {"200", "201"}
        assert daemon.terminate() == 0


@settings(max_examples=1, deadline=None, database=None, phases=[Phase.generate])
@given(batch=batches(ITEMS, 40))
def test_a_hypothesis_generated_hostile_batch_leaves_the_daemon_up_and_good_lines_flowing(tmp_path_factory, batch):
    root = tmp_path_factory.mktemp("hostile")
    config = make_workspace(root / "ws", ITEMS, min_new=10 ** 9)
    export = config.parent / "exports" / "annotations.jsonl"
    with open(export, "wb") as out:  # the known poison lines, then the generated batch
        out.write(b"".join(line.raw + b"\n" for line in [*REGRESSIONS[0], *REGRESSIONS[1], *batch]))
    lines = [*REGRESSIONS[0], *REGRESSIONS[1], *batch]
    good = {line.input_hash for line in lines if line.kind == "good"}
    with DaemonProcess(config) as daemon:
        assert daemon.wait_event("ingested", 60), daemon.events[-3:]
        time.sleep(0.5)
        assert daemon.alive()
        stored = {r["input_hash"] for r in query(config.parent / "work" / "ledger.sqlite",
                                                 "SELECT input_hash FROM annotations")}
        assert good <= stored
        listed = {(r["line"]) for r in query(config.parent / "work" / "ledger.sqlite", "SELECT line FROM invalid")}
        assert {n for n, line in enumerate(lines, 1) if line.kind == "bad"} <= listed
        append_records(export, [_good(ITEMS, 1, 300)])
        _wait_accepted(config, daemon, "300")
        assert daemon.alive() and daemon.terminate() == 0


def test_a_ledger_broken_under_the_running_daemon_is_logged_and_retried_with_backoff_not_an_exit(tmp_path):
    """A loop step that is not an event (here the round trigger reading the ledger) is guarded like an event: the
    ledger's header overwritten in place makes every query fail; the daemon logs ``step_failed`` naming the step,
    waits longer between tries, stays up and still stops cleanly."""
    items = datasets.generate_shapes(tmp_path / "images", 2, seed=43)
    config = make_workspace(tmp_path / "ws", items)
    with DaemonProcess(config) as daemon:
        assert daemon.wait_event("daemon_started", 60), daemon.events[-3:]
        time.sleep(0.5)
        work = config.parent / "work"
        for name, fill in (("ledger.sqlite", b"this is not a database any more "), ("ledger.sqlite-wal", b"junk"),
                           ("ledger.sqlite-shm", b"\0")):  # WAL mode: the index too, or cached pages hide it
            size = (work / name).stat().st_size
            with open(work / name, "r+b") as file:
                file.write((fill * (size // len(fill) + 1))[:size])
        failed = daemon.wait_event("step_failed", 30, step="round trigger")
        assert failed is not None and daemon.alive(), daemon.events[-5:]
        assert failed["error_class"] == "DatabaseError"
        time.sleep(4)
        daemon.read_events()
        tries = [e for e in daemon.events if e["event"] == "step_failed" and e["step"] == "round trigger"]
        assert daemon.alive() and 2 <= len(tries) <= 4, tries  # 1 s, 2 s, 4 s apart: not every 0.25 s tick
        assert [t["retry_in"] for t in tries[:3]] == [1.0, 2.0, 4.0][:len(tries[:3])]
        assert daemon.terminate() == 0
