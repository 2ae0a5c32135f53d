"""Re-scoring the active-learning queue fast: images sent at the model's input size, on a thread of its own.

The served models are real (the tiny SSD trained in conftest, the brightness model of test_recipe) behind a real
``odal serve``; see test_active_queue for the queue itself.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from odal.daemon.handlers import scoring
from odal.daemon.handlers.rescorer import Rescorer
from odal.daemon.rounds import pipeline_check
from odal.daemon.sources import datasets
from odal.daemon.sources.images import scoring_size
from odal.daemon.store.queue import ActiveQueue

from odal.daemon.store.ledger import Ledger
from odal.serving.client import ServingClient

from conftest import TINY_CONFIG
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


def test_images_sent_at_the_models_input_size_answer_as_the_full_size_ones(tmp_path, tiny_served):
    """The same served model, the same images: shrunk to the model's own input side (from its pipeline.config)
    the top-10 detection scores stay near-identical to the full-size ones, the ranking by top score too.  (The
    tiny model's scores barely vary between images, so this is a weak check; its embeddings differ between the
    two paths about as much as between images: the full 1024x768 image is resized 8x by the model without
    antialiasing.)"""
    side = pipeline_check.input_side(pipeline_check.read(TINY_CONFIG))
    assert side == 128
    datasets.generate_shapes(tmp_path / "data", 12, seed=5, size=(1024, 768))
    queue = ActiveQueue(tmp_path / "work" / "ledger.sqlite", tmp_path / "data")
    try:
        queue.scan()
        with ServingClient(tiny_served.serving_address, timeout=60) as client:
            answers = {s: _answers(client, tiny_served.model_name, queue, s) for s in (None, side)}
    finally:
        queue.close()
    full, small = answers[None], answers[side]
    assert set(full) == set(small) and len(full) == 12
    assert all(small[name][2][:2] == (192, 256) and full[name][2][:2] == (768, 1024) for name in full)
    ok = _error(full, small)
    print("score / embedding error at the model's side", ok)  # the embedding: see the note in the report
    assert ok[0] < 0.02, ok
    names = sorted(full)
    for i, x in enumerate(names):  # the ranking: every pair the full path tells apart keeps its order
        for y in names[i + 1:]:
            if abs(full[x][0][0] - full[y][0][0]) > 0.02:
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
