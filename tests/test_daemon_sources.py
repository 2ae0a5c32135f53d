"""The running daemon follows its sources through real inotify: Prodigy's SQLite DB, and a db-out file rewritten."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from daemon_harness import DaemonProcess, make_workspace, odal_cli, records_for
from odal.daemon.sources import datasets
from odal.daemon.store.ledger import Ledger
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
        assert daemon.wait_for(lambda e: e.get("event") == "ingested" and e.get("rewritten"), 10) is not None


def test_an_annotation_whose_image_arrives_after_it_is_ingested_when_the_image_is_written(tmp_path):
    """db-out often runs before the images are synced: the line waits (listed in status), then comes in."""
    items = datasets.generate_shapes(tmp_path / "images", 3, seed=23)
    config = make_workspace(tmp_path / "ws", items, min_new=100)
    records = records_for(items)
    late = items[2].image
    content = late.read_bytes()
    late.unlink()
    export = config.parent / "exports" / "boxes.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in records))
    with DaemonProcess(config) as daemon:
        _counts(config.parent, {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 1})
        status = odal_cli("status", "--workspace", str(config.parent))
        assert f"{export}:3  image file not found" in status.stdout and "[waiting for the image]" in status.stdout
        with open(late, "wb") as out:  # copied in two writes, like a sync tool
            out.write(content[:300])
            out.flush()
            time.sleep(0.5)
            out.write(content[300:])
        _counts(config.parent, {"accepted": 3, "rejected": 0, "ignored": 0, "invalid": 0})
        assert daemon.alive()


def test_odal_retry_makes_the_running_daemon_ingest_a_line_fixed_in_place(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 2, seed=24)
    config = make_workspace(tmp_path / "ws", items, min_new=100)
    export = config.parent / "exports" / "boxes.jsonl"
    good = json.dumps(records_for(items[1:])[0])
    bad = good.replace('"answer": "accept"', '"answer": "acceptd"')
    first = records_for(items[:1])[0]
    filler = [dict(first, _timestamp=first["_timestamp"] + n) for n in range(8)]  # past the bytes odal compares
    export.write_text("".join(json.dumps(r) + "\n" for r in filler) + bad + "\n")
    assert export.stat().st_size - len(bad) > 4096
    old = config.parent / "exports" / "old-session.jsonl"
    old.write_text("{broken\n")
    with DaemonProcess(config) as daemon:
        _counts(config.parent, {"accepted": 1, "rejected": 0, "ignored": 0, "invalid": 2})
        old.unlink()  # its set-aside line goes with it on the next full read
        with open(export, "r+b") as out:  # an editor fixing the line in place: same size, same inode
            out.seek(len(export.read_bytes()) - len(bad) - 1)
            out.write((good + " ").encode())
        time.sleep(1.0)
        ledger = Ledger(config.parent / "work" / "ledger.sqlite")
        assert ledger.counts()["accepted"] == 1  # not noticed alone
        ledger.close()
        done = odal_cli("retry", "--workspace", str(config.parent))
        assert done.returncode == 0 and f"pid {daemon.pid}" in done.stdout, done.stderr
        _counts(config.parent, {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 0})
        reread = daemon.wait_event("sources_reread", 10)
        assert reread["dropped_with_their_source"] == 1 and reread["set_aside_after"] == 0 and daemon.alive()


def _triangles(tmp_path, seed: int):
    """A workspace whose label map has "square" only and an export whose every box is labelled "triangle"."""
    items = datasets.generate_shapes(tmp_path / "images", 2, seed=seed)
    config = make_workspace(tmp_path / "ws", items, min_new=100, labels=["square"])
    records = records_for(items)
    for record in records:
        for span in record["spans"]:
            span["label"] = "triangle"
    (config.parent / "exports" / "boxes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return config


def test_a_label_added_to_the_label_map_and_sighup_bring_in_the_lines_set_aside_for_it(tmp_path):
    config = _triangles(tmp_path, 25)
    with DaemonProcess(config) as daemon:
        _counts(config.parent, {"accepted": 0, "rejected": 0, "ignored": 0, "invalid": 2})
        datasets.write_label_map(config.parent / "label_map.pbtxt", ["square", "disc", "triangle"])
        os.kill(daemon.pid, signal.SIGHUP)
        _counts(config.parent, {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 0})
        assert daemon.wait_event("config_reloaded", 10, labels_changed=True) is not None


def test_odal_retry_without_a_daemon_prepares_its_next_start(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 2, seed=26)
    config = make_workspace(tmp_path / "ws", items, min_new=100)
    export = config.parent / "exports" / "boxes.jsonl"
    export.write_text(json.dumps(records_for(items[:1])[0]) + "\n")
    with DaemonProcess(config):
        _counts(config.parent, {"accepted": 1, "rejected": 0, "ignored": 0, "invalid": 0})
    done = odal_cli("retry", "--workspace", str(config.parent))
    assert done.returncode == 0 and "no daemon is running" in done.stdout and "1 source(s)" in done.stdout
    ledger = Ledger(config.parent / "work" / "ledger.sqlite")
    assert ledger.source_state(str(export)) is None and ledger.counts()["accepted"] == 1
    ledger.close()


def test_sighup_applies_a_hot_key_and_names_a_restart_only_key_which_keeps_its_running_value(tmp_path):
    """model.label_map applies at once (lines set aside for its new label come in); metrics.address is held by
    the endpoint made at start: kept as it runs (nothing listens on the new address) and logged as needing a
    restart."""
    from odal.serving.process import free_port

    config = _triangles(tmp_path, 27)
    with DaemonProcess(config) as daemon:
        _counts(config.parent, {"accepted": 0, "rejected": 0, "ignored": 0, "invalid": 2})
        datasets.write_label_map(config.parent / "more_labels.pbtxt", ["square", "disc", "triangle"])
        port = free_port()
        text = config.read_text().replace('label_map = "label_map.pbtxt"', 'label_map = "more_labels.pbtxt"')
        config.write_text(text + f'\n[metrics]\naddress = "127.0.0.1:{port}"\n')
        os.kill(daemon.pid, signal.SIGHUP)
        assert daemon.wait_event("config_needs_restart", 10, keys=["metrics.address"]) is not None
        _counts(config.parent, {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 0})
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert daemon.alive()
