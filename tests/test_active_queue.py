"""The daemon's active-learning queue: image events, scoring with a real served model, order, answered images."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odal.daemon.handlers import scoring
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.store.queue_query import QueueQuery
from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.store.ledger import Ledger
from odal.serving.client import ServingClient
from odal.serving.process import free_port

from test_recipe import brightness_model, by_uncertainty, collect, grey_images, serve

LABELS = ("square", "disc")


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("queue_serve")
    with serve(root, {"odal": tiny_models["versions"][0], "bright": brightness_model(root / "bright")}) as address:
        yield address


@pytest.fixture
def client(server):
    with ServingClient(server, timeout=30) as client:
        yield client


@pytest.fixture
def workspace(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    paths = grey_images(data)
    ledger = Ledger(work / "ledger.sqlite")  # the daemon opens its ledger first, then the queue in the same file
    queue = ActiveQueue(work / "ledger.sqlite", data)
    yield data, work, paths, ledger, queue
    queue.close()
    ledger.close()


def test_scan_adds_every_image_and_drops_vanished_ones(workspace):
    data, _work, paths, _ledger, queue = workspace
    (data / "notes.txt").write_text("not an image")
    assert queue.scan() == {"images": len(paths), "added": len(paths), "removed": 0, "skipped": 0}
    paths[0].unlink()
    assert queue.scan() == {"images": len(paths) - 1, "added": 0, "removed": 1, "skipped": 0}
    assert queue.status()["images"] == len(paths) - 1 and queue.status()["scored"] == 0


def test_image_events_add_refresh_and_delete_rows_and_ignore_outsiders(workspace, tmp_path):
    data, _work, paths, _ledger, queue = workspace
    queue.image_changed(str(paths[0]))
    queue.image_changed(str(tmp_path / "elsewhere.png"))  # outside the data dir
    queue.image_changed(str(data / "notes.txt"))  # not an image
    assert [Path(r["path"]) for r in queue.next_images(10)] == [paths[0].resolve()]
    queue.image_changed(str(paths[0]), deleted=True)
    assert queue.next_images(10) == []
    queue.image_changed(str(data / "gone.png"))  # created then removed before the event was handled
    assert queue.next_images(10) == []


def test_score_pending_ranks_images_by_the_served_models_uncertainty(workspace, client):
    _data, _work, paths, _ledger, queue = workspace
    queue.scan()
    assert scoring.score_pending(queue, client, "bright", limit=5) == 5  # bounded
    assert queue.status()["pending"] == len(paths) - 5
    assert scoring.score_pending(queue, client, "bright", limit=50) == len(paths) - 5
    assert scoring.score_pending(queue, client, "bright", limit=50) == 0
    rows = queue.next_images(len(paths))
    assert [Path(r["path"]).name for r in rows] == by_uncertainty(paths)
    assert all(r["scored_version"] == 1 and r["digest"] and r["input_hash"] for r in rows)


def test_a_changed_image_loses_its_score_and_is_scored_again(workspace, client):
    _data, _work, paths, _ledger, queue = workspace
    queue.scan()
    scoring.score_pending(queue, client, "bright", limit=50)
    from PIL import Image

    Image.new("RGB", (64, 48), (128, 128, 128)).save(paths[0])  # darkest image becomes the most uncertain
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    queue.image_changed(str(paths[0]))
    assert queue.status()["pending"] == 1
    assert scoring.score_pending(queue, client, "bright") == 1
    top = queue.next_images(2)  # the two grey-128 images now tie for the most uncertain
    assert str(paths[0].resolve()) in {r["path"] for r in top} and top[0]["uncertainty"] > 0.99


def test_rescore_all_makes_rows_of_older_versions_pending_but_keeps_their_order(workspace, client):
    _data, _work, paths, _ledger, queue = workspace
    queue.scan()
    scoring.score_pending(queue, client, "bright", limit=50)
    before = queue.next_images(len(paths))
    queue.rescore_all(2)
    assert queue.status()["pending"] == len(paths) and queue.status()["target_version"] == 2
    assert queue.next_images(len(paths)) == before
    queue.rescore_all(1)  # never goes back
    assert queue.status()["target_version"] == 2


def test_answered_images_leave_the_queue_by_path_or_hash(workspace, client):
    data, work, paths, ledger, queue = workspace
    queue.scan()
    scoring.score_pending(queue, client, "bright", limit=50)
    answer = {"image": paths[1].name, "_input_hash": 12345, "answer": "reject", "_timestamp": 1}
    export = work / "answers.jsonl"
    export.write_text(json.dumps(answer) + "\n")
    assert ingest_export_file(export, ledger, LABELS, data, work / "images")["inserted"] == 1
    rows = queue.next_images(len(paths))
    assert str(paths[1].resolve()) not in {r["path"] for r in rows}
    victim = rows[0]
    assert victim["path"] not in {r["path"] for r in queue.next_images(len(paths), [victim["input_hash"]])}
    assert str(paths[1].resolve()) not in map(str, queue.pending(50))


def test_scoring_with_the_server_down_scores_nothing_and_returns_quickly(workspace):
    _data, _work, paths, _ledger, queue = workspace
    queue.scan()
    started = time.monotonic()
    with ServingClient(f"127.0.0.1:{free_port()}", timeout=5, retries=1) as down:
        assert scoring.score_pending(queue, down, "bright") == 0
    assert time.monotonic() - started < 10 and queue.status()["pending"] == len(paths)


def test_an_unreadable_image_is_marked_and_not_retried(workspace, client):
    data, _work, _paths, _ledger, queue = workspace
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    queue.scan()
    scoring.score_pending(queue, client, "bright", limit=50)
    assert str((data / "broken.jpg").resolve()) not in map(str, queue.pending(50))
    assert str((data / "broken.jpg").resolve()) not in {r["path"] for r in queue.next_images(50)}


def test_the_recipe_reads_the_queue_read_only_and_follows_its_order(workspace, client, server):
    from odal.recipe.predictor import Predictor
    from odal.recipe.stream import StreamOptions

    data, work, paths, ledger, queue = workspace
    queue.scan()
    scoring.score_pending(queue, client, "bright", limit=50)
    reader = QueueQuery.reader(work)
    assert reader.data_dir == data.resolve() and reader.next_images(3) == queue.next_images(3)
    assert not hasattr(reader, "scan") and not hasattr(reader, "record_scores")  # the recipe's view only reads
    reader.close()
    predictor = Predictor(server, "bright")
    try:  # batch_size 1: no on-the-fly sorting, the order is the queue's
        tasks = collect(StreamOptions(data, LABELS, order="uncertainty", batch_size=1, work_dir=work), predictor)
    finally:
        predictor.close()
    assert [t["meta"]["file"] for t in tasks] == by_uncertainty(paths)
    assert {t["path"] for t in tasks} == {p.name for p in paths}  # relative to the queue's data dir


def test_the_queue_module_never_imports_tensorflow():
    code = ("import sys, odal.daemon.store.queue, odal.recipe.stream, odal.recipe.odal_recipe\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_a_workspace_without_a_queue_reads_as_empty(tmp_path):
    Ledger(tmp_path / "ledger.sqlite").close()
    with QueueQuery.reader(tmp_path) as reader:
        assert reader.data_dir is None
        with pytest.raises(sqlite3.OperationalError):
            reader.next_images(5)


def test_the_running_daemon_scores_new_images_with_the_served_model(tmp_path):
    """A real daemon watching a data folder, with a real `odal serve`: images dropped in get an uncertainty score."""
    from daemon_harness import DaemonProcess, make_workspace

    from odal.daemon.sources import datasets

    items = datasets.generate_shapes(tmp_path / "data", 3, seed=31)
    with serve(tmp_path / "serve", {"odal": brightness_model(tmp_path / "bright")}) as address:
        config = make_workspace(tmp_path / "ws", items, min_new=100, serving_address=address)
        with DaemonProcess(config):
            grey_images(tmp_path / "data", (40, 200))  # two more images arrive while the daemon runs
            queue = QueueQuery.reader(config.parent / "work")
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and queue.status()["scored"] < 5:
                    time.sleep(0.3)
                status = queue.status()
                ranked = queue.next_images(5)
            finally:
                queue.close()
    assert status["images"] == 5 and status["scored"] == 5, status
    assert len(ranked) == 5
