"""The running daemon follows its sources through real inotify: Prodigy's SQLite DB, and a db-out file rewritten."""

from __future__ import annotations

import json
import time

from daemon_harness import DaemonProcess, make_workspace, records_for
from odal.daemon import datasets
from odal.daemon.ledger import Ledger
from test_ingest_db import ProdigyDB


def _counts(workspace, want: dict, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    counts = {}
    while time.monotonic() < deadline:
        ledger = Ledger(workspace / "work" / "ledger.sqlite")
        counts = ledger.counts()
        ledger.close()
        if counts == want:
            return counts
        time.sleep(0.2)
    raise AssertionError(f"ledger counts {counts}, expected {want}")


def test_rows_added_to_prodigys_database_are_ingested_while_the_daemon_runs(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 6, seed=21)
    config = make_workspace(tmp_path / "ws", items, min_new=100)
    (tmp_path / "prodigy").mkdir()
    db = ProdigyDB(tmp_path / "prodigy" / "prodigy.db")
    db.add("boxes", *records_for(items[:2]))
    db.add("other", *records_for(items[5:6]))  # another dataset: not ours
    text = config.read_text().replace('export_dir = "exports"',
                                      f'database = "{db.path}"\ndataset = "boxes"')
    config.write_text(text)
    with DaemonProcess(config):
        _counts(config.parent, {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 0})
        db.add("boxes", *records_for(items[2:4]), *records_for(items[4:5], "reject"))
        _counts(config.parent, {"accepted": 4, "rejected": 1, "ignored": 0, "invalid": 0})


def test_a_db_out_file_rewritten_with_more_answers_is_reingested_without_duplicates(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 5, seed=22)
    config = make_workspace(tmp_path / "ws", items, min_new=100)
    export = config.parent / "exports" / "boxes.jsonl"
    first = records_for(items[:3])
    export.write_text("".join(json.dumps(r) + "\n" for r in first))
    with DaemonProcess(config) as daemon:
        _counts(config.parent, {"accepted": 3, "rejected": 0, "ignored": 0, "invalid": 0})
        # `prodigy db-out boxes > boxes.jsonl` again, later: the same three answers, one changed, plus two new.
        changed = dict(first[0], answer="reject", spans=[], _timestamp=first[0]["_timestamp"] + 10)
        again = [changed, *first[1:], *records_for(items[3:5])]
        tmp = export.with_name(".boxes.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in again))
        tmp.replace(export)
        _counts(config.parent, {"accepted": 4, "rejected": 1, "ignored": 0, "invalid": 0})
        daemon.read_events()
        assert any(e.get("event") == "ingested" and e.get("rewritten") for e in daemon.events)
