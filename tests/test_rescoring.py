"""Re-scoring the active-learning queue fast: images sent at the model's input size, on a thread of its own.

The served models are real (the tiny SSD trained in conftest, the brightness model of test_recipe) behind a real
``odal serve``; see test_active_queue for the queue itself.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from odal.daemon.handlers import scoring
from odal.daemon.handlers.rescorer import Rescorer
from odal.daemon.sources.images import scoring_size
from odal.daemon.store.queue import ActiveQueue

from odal.daemon.store.ledger import Ledger
from odal.serving.client import ServingClient

from test_recipe import brightness_model, grey_images, serve


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    """A ServingClient of ``odal serve`` serving the brightness model (test_recipe) as ``bright``, version 1."""
    root = tmp_path_factory.mktemp("rescore_serve")
    with serve(root, {"bright": brightness_model(root / "bright")}) as address:
        with ServingClient(address, timeout=30) as client:
            yield client


def _answers(client, model, queue, side):
    """path -> (top-10 detection scores, embedding, pixels shape) of every pending image, sent at ``side``."""
    images = scoring.read_pending(queue, 100, model_side=side)
    found = client.predict_many(model, [image.pixels for image in images], concurrency=2)
    return {image.path.name: (np.pad(d.scores[:10], (0, 10 - len(d.scores[:10]))), d.embedding, image.pixels.shape)
            for image, d in zip(images, found)}


def _error(full, other):
    """Mean |score difference| of the top-10 detections, and the mean embedding distance over the typical
    distance between two images: how far ``other`` answers from ``full``."""
    names = sorted(full)
    scores = float(np.mean([np.abs(full[n][0] - other[n][0]).mean() for n in names]))
    between = np.mean([np.linalg.norm(full[a][1] - full[b][1]) for a, b in zip(names, names[1:])]) + 1e-9
    return scores, float(np.mean([np.linalg.norm(full[n][1] - other[n][1]) for n in names]) / between)


@pytest.fixture
def person(tmp_path_factory, raccoon):
    """``odal serve`` serving the pretrained SSDLite (its own class, person: `odal pretrained export`) as
    ``person``, and a data dir of 10 raccoon photos enlarged to about 1600 px (a camera's size, where shrinking
    before sending pays)."""
    root = tmp_path_factory.mktemp("rescore_person")
    export = root / "person"
    proc = subprocess.run([str(Path(sys.executable).parent / "odal"), "pretrained", "export", str(export)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = root / "data"
    data.mkdir()
    for path in sorted((raccoon / "images").glob("*.jpg"))[:10]:
        image = Image.open(path).convert("RGB")
        scale = 1600 / max(image.size)
        image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(
            data / path.name, quality=92)
    with serve(root, {"person": export}) as address:
        with ServingClient(address, timeout=120) as client:
            yield client, data, root


def test_images_sent_at_the_models_input_size_answer_as_the_full_size_ones(person):
    """The same served model (the pretrained SSDLite, which tells these photos apart), the same photos: sent at the
    model's input side (300) instead of the 1024-a-side the queue sent before, the top
    detection scores and the embeddings stay close, far closer than when an image is shrunk well below what the model
    sees (a broken reduction, here 40 px a side: the check must be able to tell)."""
    client, data, root = person
    side = 300  # the converted start's own input (a 300x300 fixed resizer, as the frozen graph)
    queue = ActiveQueue(root / "work" / "ledger.sqlite", data)
    try:
        queue.scan()
        answers = {s: _answers(client, "person", queue, s) for s in (None, side, 40)}
    finally:
        queue.close()
    full, small, broken = answers[None], answers[side], answers[40]
    assert len(full) == 10 and all(max(small[n][2][:2]) < max(full[n][2][:2]) for n in full)  # it did shrink
    assert all(min(small[n][2][:2]) >= side for n in full)
    ok, bad = _error(full, small), _error(full, broken)
    print("score / embedding error at the model's side", ok, "at 40 px", bad)
    assert ok[0] < 0.5 * bad[0] and ok[1] < 0.5 * bad[1], (ok, bad)
    assert ok[0] < 0.05 and ok[1] < 0.5, ok
    names = sorted(full)
    for i, x in enumerate(names):  # the ranking: every pair the full path tells apart clearly keeps its order
        for y in names[i + 1:]:
            if abs(full[x][0][0] - full[y][0][0]) > 0.1:
                assert (full[x][0][0] > full[y][0][0]) == (small[x][0][0] > small[y][0][0]), (x, y)


def test_the_rescorer_scores_the_queue_on_its_own_thread_only_while_allowed(tmp_path, bright):
    """The daemon's loop never waits for scoring: the rescorer thread does it, holds back while a round runs
    (``allowed`` False), scores everything once allowed and woken, waits (no busy loop) while the server answers
    with an older version than the queue's target, and scores a new image as soon as it is woken."""
    data = tmp_path / "data"
    paths = grey_images(data)
    ledger = Ledger(tmp_path / "work" / "ledger.sqlite")
    queue = ActiveQueue(tmp_path / "work" / "ledger.sqlite", data)
    queue.scan()
    rescorer = Rescorer(queue, bright, "bright", idle_seconds=30)
    rescorer.allowed = False
    rescorer.start()
    try:
        time.sleep(0.5)
        assert queue.status()["scored"] == 0  # not allowed: nothing scored
        rescorer.allowed = True
        rescorer.wake()
        deadline = time.monotonic() + 30
        while queue.status()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.status()["pending"] == 0 and queue.status()["scored"] == len(paths)
        queue.rescore_all(7)  # a version the server does not answer with (not loaded yet)
        rescorer.wake()
        deadline = time.monotonic() + 20
        while rescorer.scored < 2 * len(paths) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert rescorer.scored == 2 * len(paths)  # scored once with version 1, then it waits: no busy loop
        Image.new("RGB", (64, 48), (99, 99, 99)).save(data / "new.png")
        queue.image_changed(data / "new.png", False)
        rescorer.wake()  # without the wake it would wait idle_seconds (30 s)
        deadline = time.monotonic() + 20
        while queue.status()["scored"] < len(paths) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.status()["scored"] == len(paths) + 1
    finally:
        rescorer.stop()
        queue.close()
        ledger.close()
    assert not rescorer._thread.is_alive()


@given(st.integers(1, 20_000), st.integers(1, 20_000), st.integers(16, 4096),
       st.one_of(st.none(), st.integers(1, 2048)))
def test_the_scoring_size_never_enlarges_keeps_the_aspect_and_the_models_resolution(width, height, max_side, side):
    w, h = scoring_size((width, height), max_side, side)
    assert 1 <= w <= width and 1 <= h <= height and max(w, h) <= max(max_side, 1)
    assert abs(w * height - h * width) <= width + height  # the aspect, but for rounding each side
    if side is not None and min(width, height) * min(1.0, max_side / max(width, height)) >= side:
        assert min(w, h) >= side - 1  # never below the model's own input side (rounding aside)
