"""Bad input, catalogued: each kind gets one clear logged error naming its source, is set aside, loses nothing else.

Record-level kinds (:data:`KINDS`, one test each) go through the daemon's own ingest code with a real workspace,
ledger and images, between two good records, and must show in ``odal status`` (``status_data``, what ``--json``
prints).  Source-level kinds (an export truncated or replaced while read, a locked Prodigy database, ...) have
their own tests.  A few run the real daemon process: all record kinds at once in one export, a bad
``pipeline.config`` and a full disk while exporting (the round fails clearly, the previous version keeps serving,
the daemon keeps running).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon_harness import DaemonProcess, append_records, make_workspace
from odal.daemon.sources import datasets
from odal.daemon.commands.status import status_data
from odal.daemon.config import load
from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.handlers.ingest_db import ingest_prodigy_db
from odal.daemon.store.ledger import Ledger

LABELS = list(datasets.SHAPE_LABELS)


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.items = datasets.generate_shapes(root / "images", 6, seed=5)
        self.data = root / "images"
        self.config = make_workspace(root / "ws", self.items)
        self.cfg = load(self.config)
        self.export = self.cfg.export_dir / "annotations.jsonl"
        self.ledger = Ledger(self.cfg.ledger_path)

    def record(self, index: int = 1, **changes) -> dict:
        obj = datasets.prodigy_record(self.items[index], self.items[index].image.name, timestamp=1000)
        obj.update(changes)
        return obj

    def line(self, index: int = 1, **changes) -> str:
        return json.dumps(self.record(index, **changes))

    def span(self, **changes) -> dict:
        return dict(self.record(1)["spans"][0], **changes)

    def ingest(self) -> dict:
        return ingest_export_file(self.export, self.ledger, LABELS, self.data, self.cfg.work_dir / "images")


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace(tmp_path)
    yield workspace
    workspace.ledger.close()


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (the pixel data is one tiny valid stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


def _file(ws: Workspace, name: str, data: bytes) -> str:
    (ws.data / name).write_bytes(data)
    return name


def _image(ws: Workspace, name: str) -> str:
    return ws.line(image=name, path=name, meta={"file": name})


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _jpeg_bytes(ws: Workspace) -> bytes:
    return ws.items[0].image.read_bytes()


def _no_image(ws: Workspace) -> str:
    obj = ws.record()
    for key in ("image", "path", "meta"):
        obj.pop(key)
    return json.dumps(obj)


def _symlink(ws: Workspace, name: str, target: str) -> str:
    os.symlink(target, ws.data / name)
    return _image(ws, name)


def _loop(ws: Workspace) -> str:
    os.symlink(ws.data / "loop-b.jpg", ws.data / "loop-a.jpg")
    os.symlink(ws.data / "loop-a.jpg", ws.data / "loop-b.jpg")
    return _image(ws, "loop-a.jpg")


def _without(ws: Workspace, key: str) -> str:
    obj = ws.record()
    obj.pop(key)
    return json.dumps(obj)


# kind -> (build the bad line for this workspace, part of the expected error)
KINDS = {
    # the line itself
    "truncated-json": (lambda ws: ws.line()[:40], "malformed JSON"),
    "trailing-garbage": (lambda ws: ws.line() + " }", "malformed JSON"),
    "not-utf8": (lambda ws: b'{"image": "\xff\xfe.jpg"}', "not UTF-8"),
    "json-array": (lambda ws: "[1, 2, 3]", "not a JSON object"),
    "json-string": (lambda ws: '"image.jpg"', "not a JSON object"),
    "json-number": (lambda ws: "42", "not a JSON object"),
    "json-null": (lambda ws: "null", "not a JSON object"),
    "nested-too-deep": (lambda ws: "[" * 100000 + "]" * 100000, "nested too deeply"),
    # the image reference
    "no-image": (_no_image, "no image"),
    "empty-image-no-fallback": (lambda ws: json.dumps({**json.loads(_no_image(ws)), "image": ""}), "no image"),
    "image-not-string": (lambda ws: ws.line(image=5), "image must be a string"),
    "image-is-list": (lambda ws: ws.line(image=["a.jpg"]), "image must be a string"),
    "https-url": (lambda ws: ws.line(image="https://example.com/x.jpg"), "URL images cannot be fetched"),
    "http-url": (lambda ws: ws.line(image="http://10.0.0.1/x.jpg"), "URL images cannot be fetched"),
    "ftp-url": (lambda ws: ws.line(image="ftp://example.com/x.jpg"), "unsupported image reference"),
    "s3-url": (lambda ws: ws.line(image="s3://bucket/x.jpg"), "unsupported image reference"),
    "missing-file": (lambda ws: _image(ws, "gone.jpg"), "image file not found: gone.jpg"),
    "path-escape": (lambda ws: ws.line(image="../../etc/passwd"), "outside data_dir"),
    "absolute-outside": (lambda ws: ws.line(image="/etc/passwd"), "outside data_dir"),
    "symlink-out": (lambda ws: _symlink(ws, "out.jpg", "/etc/hostname"), "outside data_dir"),
    "symlink-loop": (_loop, "cannot be resolved"),
    "symlink-dangling": (lambda ws: _symlink(ws, "dangling.jpg", str(ws.data / "nothing.jpg")), "not found"),
    "nul-in-path": (lambda ws: ws.line(image="a\u0000.jpg"), "cannot be resolved"),
    "directory": (lambda ws: ((ws.data / "folder.jpg").mkdir(), _image(ws, "folder.jpg"))[1], "not a file"),
    # the image file
    "empty-file": (lambda ws: _image(ws, _file(ws, "empty.jpg", b"")), "empty (0 bytes)"),
    "text-file": (lambda ws: _image(ws, _file(ws, "notes.jpg", b"not a JPEG at all")), "cannot be decoded"),
    "truncated-jpeg": (lambda ws: _image(ws, _file(ws, "cut.jpg", _jpeg_bytes(ws)[:1500])), "cannot be decoded"),
    "truncated-png": (lambda ws: _image(ws, _file(ws, "cut.png", _png(8, 8)[:30])), "cannot be decoded"),
    "gigantic-image": (lambda ws: _image(ws, _file(ws, "huge.png", _png(20000, 20000))), "too large"),
    "zero-width-image": (lambda ws: _image(ws, _file(ws, "zero.png", _png(0, 10))), "cannot be decoded"),
    "data-uri-bad-base64": (lambda ws: ws.line(image="data:image/png;base64,@@@@"), "not valid base64"),
    "data-uri-not-image": (lambda ws: ws.line(image=_data_uri("text/plain", b"hi")), "unsupported data URI"),
    "data-uri-garbage": (lambda ws: ws.line(image=_data_uri("image/jpeg", b"garbage")), "cannot be decoded"),
    "data-uri-empty": (lambda ws: ws.line(image="data:image/png;base64,"), "empty"),
    # the boxes
    "box-outside-image": (lambda ws: ws.line(spans=[ws.span(points=[[500, 500], [600, 600]])]), "zero area"),
    "zero-area-box": (lambda ws: ws.line(spans=[ws.span(points=[[5, 5], [5, 50]])]), "zero area"),
    "nan-point": (lambda ws: ws.line(spans=[ws.span(points=[[float("nan"), 1], [5, 5]])]), "not finite"),
    "infinite-point": (lambda ws: ws.line(spans=[ws.span(points=[[float("inf"), 1], [5, 5]])]), "not finite"),
    "text-point": (lambda ws: ws.line(spans=[ws.span(points=[["x", 1], [5, 5]])]), "not an [x, y] pair"),
    "three-coordinates": (lambda ws: ws.line(spans=[ws.span(points=[[1, 1, 1], [5, 5]])]), "not an [x, y] pair"),
    "empty-points": (lambda ws: ws.line(spans=[ws.span(points=[])]), "has no points"),
    "span-not-object": (lambda ws: ws.line(spans=["box"]), "span 0 is not an object"),
    "spans-not-list": (lambda ws: ws.line(spans={"label": "disc"}), "spans must be a list"),
    "unknown-label": (lambda ws: ws.line(spans=[ws.span(label="raccoon")]), "label 'raccoon'"),
    "no-label": (lambda ws: ws.line(spans=[ws.span(label=None)]), "label None"),
    # the task fields
    "bad-answer": (lambda ws: ws.line(answer="maybe"), "answer must be one of"),
    "no-answer": (lambda ws: _without(ws, "answer"), "answer must be one of"),
    "no-input-hash": (lambda ws: _without(ws, "_input_hash"), "_input_hash is missing"),
    "text-input-hash": (lambda ws: ws.line(_input_hash="abc"), "_input_hash must be an integer"),
    "bool-input-hash": (lambda ws: ws.line(_input_hash=True), "_input_hash must be an integer"),
    "text-timestamp": (lambda ws: ws.line(_timestamp="yesterday"), "_timestamp must be a finite number"),
    "zero-width": (lambda ws: ws.line(width=0), "width must be a number > 0"),
    "negative-height": (lambda ws: ws.line(height=-160), "height must be a number > 0"),
    "text-width": (lambda ws: ws.line(width="192"), "width must be a number > 0"),
    "no-height-with-boxes": (lambda ws: _without(ws, "height"), "needs width and height"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_bad_record_is_logged_with_file_and_line_set_aside_and_the_rest_ingested(ws, kind):
    build, error = KINDS[kind]
    bad = build(ws)
    with open(ws.export, "ab") as out:
        for line in (ws.line(0), bad, ws.line(2)):
            out.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    with capture_logs() as logs:
        stats = ws.ingest()  # returns: the daemon's loop goes on
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["file"], e["line"]) for e in errors] == [("record_set_aside", str(ws.export), 2)]
    assert error in errors[0]["error"]
    assert stats["accept"] == 2 and stats["set_aside"] == 1
    status = status_data(ws.config.parent)
    assert [(i["source"], i["line"]) for i in status["set_aside"]] == [(str(ws.export), 2)]
    assert error in status["set_aside"][0]["error"]
    assert status["annotations"]["accepted"] == 2 and status["annotations"]["invalid"] == 1


# ------------------------------------------------------------------------------------------- sources


def test_an_export_truncated_while_being_read_is_read_again_and_nothing_is_lost(ws):
    """The file is cut to nothing mid-read and refilled; the next read starts over and gets every record."""
    lines = [ws.line(i % 6, _input_hash=10_000 + i) for i in range(6000)]
    ws.export.write_text("\n".join(lines) + "\n")
    reader = threading.Thread(target=ws.ingest)
    reader.start()
    time.sleep(0.05)
    with open(ws.export, "r+") as handle:
        handle.truncate(0)
    reader.join()
    ws.export.write_text("\n".join(lines[:10]) + "\n")
    with capture_logs() as logs:
        ws.ingest()
    assert not [e for e in logs if e["log_level"] == "error"]
    hashes = {str(10_000 + i) for i in range(10)}
    assert hashes <= {a["input_hash"] for a in ws.ledger.accepted()}


def test_an_export_replaced_while_being_read_is_read_again_from_the_start(ws):
    lines = [ws.line(i % 6, _input_hash=20_000 + i) for i in range(6000)]
    ws.export.write_text("\n".join(lines) + "\n")
    replacement = ws.export.with_name(".new")
    replacement.write_text(ws.line(3, _input_hash=999) + "\n")
    reader = threading.Thread(target=ws.ingest)
    reader.start()
    time.sleep(0.05)
    os.replace(replacement, ws.export)
    reader.join()
    with capture_logs() as logs:
        stats = ws.ingest()
    assert stats["rewritten"] and not [e for e in logs if e["log_level"] == "error"]
    assert "999" in {a["input_hash"] for a in ws.ledger.accepted()}


def test_an_export_path_that_is_a_folder_is_one_error_naming_it(ws):
    folder = ws.export.with_name("folder.jsonl")
    folder.mkdir()
    with capture_logs() as logs:
        ingest_export_file(folder, ws.ledger, LABELS, ws.data, ws.cfg.work_dir / "images")
    (event,) = [e for e in logs if e["log_level"] == "error"]
    assert event["event"] == "export_unreadable" and event["file"] == str(folder)


def _prodigy_db(path: Path, contents: list[str]) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE dataset (id INTEGER PRIMARY KEY, name TEXT UNIQUE, created INTEGER, meta TEXT, session BOOL);
        CREATE TABLE example (id INTEGER PRIMARY KEY, input_hash INTEGER, task_hash INTEGER, content TEXT);
        CREATE TABLE link (id INTEGER PRIMARY KEY, example_id INTEGER, dataset_id INTEGER);
        INSERT INTO dataset VALUES (1, 'shapes', 0, '{}', 0);
    """)
    for n, content in enumerate(contents, 1):
        conn.execute("INSERT INTO example VALUES (?, 0, 0, ?)", (n, content))
        conn.execute("INSERT INTO link VALUES (?, ?, 1)", (n, n))
    conn.commit()
    conn.close()


def test_a_locked_prodigy_database_is_a_warning_and_is_read_when_unlocked(ws):
    db = ws.root / "prodigy.db"
    _prodigy_db(db, [ws.line(0), "{not json", ws.line(2)])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with capture_logs() as logs:
            stats = ingest_prodigy_db(db, "shapes", ws.ledger, LABELS, ws.data, ws.cfg.work_dir / "images",
                                      timeout=0.1)
        assert stats["locked"] and [e["event"] for e in logs if e["log_level"] == "warning"] == ["prodigy_db_locked"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with capture_logs() as logs:
        ingest_prodigy_db(db, "shapes", ws.ledger, LABELS, ws.data, ws.cfg.work_dir / "images")
    (event,) = [e for e in logs if e["log_level"] == "error"]
    assert event["file"] == f"{db}#shapes" and event["line"] == 2
    assert ws.ledger.counts()["accepted"] == 2


# ---------------------------------------------------------------------------------------- real daemon


def test_the_daemon_sets_aside_every_kind_in_one_export_and_keeps_running(tmp_path):
    workspace = Workspace(tmp_path)
    workspace.ledger.close()
    lines = [workspace.line(0)]
    for build, _error in KINDS.values():
        lines.append(build(workspace))
    lines.append(workspace.line(2))
    with open(workspace.export, "ab") as out:
        out.write(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    text = workspace.config.read_text().replace("min_new_annotations = 2", "min_new_annotations = 1000")
    workspace.config.write_text(text)
    daemon = DaemonProcess(workspace.config).start()
    try:
        assert daemon.wait_event("ingested", 60) is not None
        set_aside = [e for e in daemon.events if e["event"] == "record_set_aside"]
        assert sorted(e["line"] for e in set_aside) == list(range(2, len(KINDS) + 2))
        assert {e["file"] for e in set_aside} == {str(workspace.export)}
        assert all(e["level"] == "error" for e in set_aside)
        more = [workspace.line(3)]
        append_records(workspace.export, more)
        assert daemon.wait_event("ingested", 30) is not None and daemon.alive()
        deadline = time.monotonic() + 10
        while True:  # the status file is rewritten at most once a second
            status = json.loads(subprocess.run(["odal", "status", "--workspace", str(workspace.config.parent),
                                                "--json"], capture_output=True, text=True, check=True,
                                               env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:"
                                                        f"{os.environ.get('PATH', '')}")).stdout)
            if status["now"]["text"] == "idle" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status["annotations"] == {"accepted": 3, "rejected": 0, "ignored": 0, "invalid": len(KINDS)}
        assert status["daemon"]["pid"] == daemon.pid and len(status["set_aside"]) == 20
        assert status["now"]["text"] == "idle" and status["now"]["running"]
        assert daemon.terminate() == 0
    finally:
        daemon.stop()


def _serving(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_a_bad_pipeline_config_a_serving_endpoint_down_and_a_full_disk_fail_rounds_clearly_and_v1_keeps_serving(
        tmp_path, tiny_models):
    """One real daemon, three rounds: a broken pipeline.config, no server answering the serving check (the new
    version is quarantined; an annotated image deleted meanwhile is left out), and a disk that fills up while
    exporting (a tmpfs just large enough)."""
    import tensorflow as tf

    from odal.serving.process import free_port

    base = tmp_path / "base"
    base.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(base)],
                             capture_output=True).returncode == 0
    try:
        shutil.copytree(tiny_models["versions"][0], base / "1")
        items = datasets.generate_shapes(tmp_path / "images", 18, seed=9)
        config = make_workspace(tmp_path / "ws", items, steps=5, min_new=4, base_path=base,
                                serving_address=f"127.0.0.1:{free_port()}")  # nothing listens there
        config.write_text(config.read_text().replace("confirm_timeout_seconds = 120", "confirm_timeout_seconds = 3"))
        pipeline = config.parent / "pipeline.config"
        good = pipeline.read_text()
        export = config.parent / "exports" / "annotations.jsonl"

        def round_fails(number: int, batch: list) -> dict:
            append_records(export, [datasets.prodigy_record(i, i.image.name) for i in batch])
            failed = daemon.wait_for(lambda e: e.get("event") == "round_failed" and e.get("round") == number, 900)
            assert failed is not None, daemon.events[-5:]
            assert daemon.alive() and _serving(base) == [1] and not list(base.glob(".staging-*"))
            tf.saved_model.load(str(base / "1"))
            return failed

        daemon = DaemonProcess(config).start()
        try:  # broken while the daemon runs (at start the daemon refuses to start, naming the file: test_pipeline_check)
            assert daemon.wait_event("daemon_started", 120), daemon.events[-3:]
            pipeline.write_text("model { ssd { num_classes: 2 \n this is not a pipeline config")
            failed = round_fails(1, items[:6])
            assert f"{pipeline} is not a usable pipeline config: ParseError" in failed["error"]

            pipeline.write_text(good)
            items[0].image.unlink()  # deleted after it was annotated: left out of the round, not fatal to it
            failed = round_fails(2, items[6:12])
            assert "version 2 did not serve" in failed["error"] and "quarantined" in failed["error"]
            missing = next(e for e in daemon.events if e.get("event") == "images_missing" and e.get("round") == 2)
            assert missing["images"] == [str(items[0].image.resolve())]
            assert daemon.wait_event("version_quarantined", 5)["version"] == 2

            if not mounted:
                pytest.skip("cannot mount a tmpfs here (not root?): the full-disk round did not run")
            used = shutil.disk_usage(base).used
            subprocess.run(["mount", "-o", f"remount,size={used + 1_500_000}", str(base)], check=True)
            failed = round_fails(3, items[12:])
            assert "No space left on device" in failed["error"]

            rounds = status_data(config.parent)["rounds"]
            assert [r["state"] for r in rounds] == ["failed", "failed", "failed"]
            assert daemon.terminate() == 0
        finally:
            daemon.stop()
    finally:
        if mounted:
            subprocess.run(["umount", str(base)], check=False)


def test_a_prodigy_database_locked_while_the_daemon_starts_is_read_once_it_is_free(tmp_path):
    workspace = Workspace(tmp_path)
    workspace.ledger.close()
    db = tmp_path / "prodigy.db"
    _prodigy_db(db, [workspace.line(0), "{not json", workspace.line(2)])
    text = workspace.config.read_text().replace('export_dir = "exports"',
                                                f'database = "{db}"\ndataset = "shapes"')
    workspace.config.write_text(text.replace("min_new_annotations = 2", "min_new_annotations = 1000"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    daemon = DaemonProcess(workspace.config).start()
    try:
        assert daemon.wait_event("prodigy_db_locked", 60) is not None
        time.sleep(1.5)
        assert daemon.alive(), (workspace.config.parent / "daemon.stderr").read_text()[-2000:]
        holder.execute("INSERT INTO example VALUES (4, 0, 0, ?)", (workspace.line(3),))
        holder.execute("INSERT INTO link VALUES (4, 4, 1)")
        holder.execute("COMMIT")
        event = daemon.wait_event("record_set_aside", 30)
        assert event is not None and event["file"] == f"{db}#shapes" and event["line"] == 2
        assert daemon.wait_for(lambda e: e.get("event") == "ingested" and e.get("accept") == 3, 30)
        assert status_data(workspace.config.parent)["annotations"]["accepted"] == 3
        assert daemon.terminate() == 0
    finally:
        holder.close()
        daemon.stop()
