"""Hostile files in the data dir: the queue's scan, events and scoring reads, the ingest's image check and the
round's snapshot refuse special files, links leading out, loops, bombs and oversized files, without blocking or
reading them whole, while good images still flow."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hostile import jpeg, make

from odal.daemon.sources import limits

from odal.daemon.sources import safe_files
from odal.daemon.handlers import scoring
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.handlers.ingest import ingest_export_file, retry_waiting
from odal.daemon.rounds.inputs import with_images
from odal.daemon.sources.images import COMPLETE_BUT
from odal.daemon.store.ledger import Ledger

HOSTILE = ("fifo", "dev_zero_link", "dev_node", "loop", "self_loop", "escaping_link", "dangling_link", "bomb",
           "big_png", "truncated_jpeg", "random_bytes", "folder", "empty", "sparse_huge")


@pytest.fixture(autouse=True)
def _limits():
    limits.reset()
    yield
    limits.reset()


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if a read blocks on a FIFO: SIGALRM after 20 s."""
    def expired(*_):
        raise TimeoutError("a read blocked (a FIFO opened without O_NONBLOCK?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data dir with three good images and one entry of every hostile kind (named ``<kind>.png``)."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "outside").mkdir()
    for n in range(3):
        make(data, f"good-{n}.jpg", "good", seed=n)
    for kind in HOSTILE:
        make(data, f"{kind}.png", kind, outside=tmp_path / "outside")
    return data


def _rss_kb() -> int:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:")).split()[1])


def test_the_queue_scan_lists_only_regular_files_inside_the_data_dir_and_never_blocks(data_dir, tmp_path, no_hang):
    queue = ActiveQueue(tmp_path / "work" / "ledger.sqlite", data_dir)
    try:
        stats = queue.scan()
        listed = {Path(r["path"]).name for r in queue.next_images(100)}
        # Regular files inside are listed (scoring decides whether they decode); nothing else is.
        assert listed == {"good-0.jpg", "good-1.jpg", "good-2.jpg", "bomb.png", "big_png.png", "truncated_jpeg.png",
                          "random_bytes.png", "empty.png", "sparse_huge.png"} - {"sparse_huge.png"}
        assert stats["skipped"] >= 7
        os.symlink(data_dir / "x.png", data_dir / "y.png")  # a loop made while running: an event, not a crash
        os.symlink(data_dir / "y.png", data_dir / "x.png")
        for name in ("x.png", "y.png", "fifo.png", "dev_zero_link.png", "folder.png"):
            queue.image_changed(str(data_dir / name))
        assert {Path(r["path"]).name for r in queue.next_images(100)} == listed
    finally:
        queue.close()


def test_scoring_reads_are_bounded_bombs_and_broken_files_are_marked_once_and_good_images_are_read(
        data_dir, tmp_path, no_hang):
    """Defects: a bomb raised DecompressionBombError out of scoring (the daemon died ~4 s after each start); a
    90 MP image was decoded in full and sent every 10 s."""
    from odal.serving.client import ServingClient
    from odal.serving.process import free_port

    queue = ActiveQueue(tmp_path / "work" / "ledger.sqlite", data_dir)
    before = _rss_kb()
    try:
        queue.scan()
        with ServingClient(f"127.0.0.1:{free_port()}", timeout=5, retries=1) as down:  # reads, then finds no server
            assert scoring.score_pending(queue, down, "odal", limit=100) == 0
        errors = {Path(r["path"]).name: r["error"] for r in queue._read(
            "SELECT path, error FROM active_queue WHERE error IS NOT NULL", ())}
        assert "too large (a decompression bomb" in errors["bomb.png"]
        assert "too large (10000x9000 > 50000000 pixels)" in errors["big_png.png"]
        assert set(errors) == {"bomb.png", "big_png.png", "truncated_jpeg.png", "random_bytes.png", "empty.png"}
        good = sorted(str((data_dir / f"good-{n}.jpg").resolve()) for n in range(3))
        assert sorted(map(str, queue.pending(100))) == good  # the bad ones are never re-tried
        images = scoring.read_pending(queue, 100)
        assert sorted(str(i.path) for i in images) == good
        assert all(i.pixels.shape == (i.height, i.width, 3) for i in images)
    finally:
        queue.close()
    assert _rss_kb() - before < 150_000  # no bomb decoded, no /dev/zero read


def test_a_huge_image_is_shrunk_for_scoring(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(data / "big.jpg", quality=80)
    queue = ActiveQueue(tmp_path / "work" / "ledger.sqlite", data)
    try:
        queue.scan()
        (image,) = scoring.read_pending(queue, 5)
        assert image.pixels.shape == (768, 1024, 3) and image.data == (data / "big.jpg").read_bytes()
    finally:
        queue.close()


@pytest.mark.parametrize("kind, message", [
    ("fifo", "is a FIFO, not a regular file"), ("dev_zero_link", "outside data_dir"),
    ("dev_node", "is a character device"), ("loop", "cannot be resolved"), ("escaping_link", "outside data_dir"),
    ("bomb", "too large (a decompression bomb"), ("big_png", "too large (10000x9000 > 50000000 pixels)"),
    ("folder", "is a folder"), ("sparse_huge", "too large (3221225472 bytes"),
])
def test_the_ingest_sets_aside_lines_whose_image_is_special_a_link_out_or_a_bomb_naming_file_and_image(
        data_dir, tmp_path, kind, message, no_hang):
    export = tmp_path / "export.jsonl"
    lines = [{"image": name, "_input_hash": n, "answer": "accept", "width": 40, "height": 30}
             for n, name in enumerate(["good-0.jpg", f"{kind}.png", "good-1.jpg"])]
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with Ledger(tmp_path / "work" / "ledger.sqlite") as ledger:
        stats = ingest_export_file(export, ledger, ["disc"], data_dir, tmp_path / "work" / "images")
        (item,) = ledger.invalid_items()
    assert stats["accept"] == 2 and stats["set_aside"] == 1
    assert item["line"] == 2 and message in item["error"] and f"{kind}.png" in item["error"]
    assert item["image"] is None  # set aside for good, not "waiting for the image"


def test_a_truncated_jpeg_waits_while_it_may_be_copied_then_is_set_aside_as_complete_but_broken(tmp_path):
    """Defect: a complete truncated JPEG was listed as "waiting for the image" for ever."""
    limits.configure(limits.Limits(settle_seconds=0.5))
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    good = jpeg((96, 80))
    (data / "cut.jpg").write_bytes(good[: len(good) // 2])
    export = tmp_path / "export.jsonl"
    record = {"image": "cut.jpg", "_input_hash": 7, "answer": "accept", "width": 96, "height": 80,
              "spans": [{"label": "disc", "points": [[1, 1], [1, 9], [9, 9], [9, 1]]}]}
    export.write_text(json.dumps(record) + "\n")
    with Ledger(work / "ledger.sqlite") as ledger:
        ingest_export_file(export, ledger, ["disc"], data, work / "images")
        (item,) = ledger.invalid_items()
        assert item["image"] and not item["error"].startswith(COMPLETE_BUT)  # may still be being copied
        time.sleep(0.6)  # the daemon looks again when the file settled (SettleRechecks)
        retry_waiting(data / "cut.jpg", ledger, ["disc"], data, work / "images")
        (item,) = ledger.invalid_items()
        assert item["error"].startswith(f"{COMPLETE_BUT} cannot be decoded (unchanged for 0.5 s)")
        assert str((data / "cut.jpg").resolve()) in item["error"]
        (data / "cut.jpg").write_bytes(good)  # replaced by the whole file: the watcher's event brings it in
        assert retry_waiting(data / "cut.jpg", ledger, ["disc"], data, work / "images")["accept"] == 1
        assert ledger.invalid_items() == [] and ledger.counts()["accepted"] == 1


def test_the_round_snapshot_leaves_out_images_replaced_by_special_files_or_bombs(data_dir):
    annotations = [{"input_hash": name, "image_path": str(data_dir / name), "boxes": []}
                   for name in ["good-0.jpg", *(f"{kind}.png" for kind in HOSTILE)]]
    present, missing = with_images(annotations, [data_dir.resolve()])
    assert [a["input_hash"] for a in present] == ["good-0.jpg"]
    assert missing == [str(data_dir / f"{kind}.png") for kind in HOSTILE]
