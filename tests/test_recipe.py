"""The recipe's stream against a real ``odal serve`` subprocess serving real SavedModels.

Two models are served: ``odal``, version 1 of the tiny SSD the session trained (boxes are compared with the
SavedModel's own output), and ``bright``, a real SavedModel with the OD API's detection signature whose one box's
score is the image's mean brightness.  The 20-step tiny SSD answers every image with the same scores, so ordering
by uncertainty is checked with ``bright``, whose confidence the test controls (grey level 128 is a coin toss).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.store.ledger import Ledger
from odal.common.uncertainty import uncertainty
from odal.recipe.predictor import Predictor
from odal.recipe.stream import StreamOptions, build_stream
from odal.recipe.tasks import read_image
from odal.serving.client import ServingClient
from odal.serving.process import ServerProcess, free_port

LABELS = ("square", "disc")
GREYS = (10, 128, 240, 90, 200, 60, 160, 30)  # uncertainty 1 - |2*g/255 - 1|: 128 first, 10 last


# ---- helpers shared with test_active_queue.py ----------------------------------------------------------------

def brightness_model(folder: Path) -> Path:
    """A real SavedModel with the OD API detection signature: one box, class 1, score = mean brightness."""
    import tensorflow as tf

    class Bright(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            score = tf.reduce_mean(tf.cast(input_tensor, tf.float32), axis=[1, 2, 3]) / 255.0
            return {"detection_boxes": tf.constant([[[0.25, 0.125, 0.75, 0.625]]], tf.float32),
                    "detection_scores": score[:, tf.newaxis],
                    "detection_classes": tf.ones([1, 1], tf.float32),
                    "num_detections": tf.ones([1], tf.float32)}

    module = Bright()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


@contextlib.contextmanager
def serve(root: Path, models: dict[str, Path]) -> Iterator[str]:
    """``odal serve`` on free loopback ports with each model's folder as its version 1; yields the gRPC address
    once every model is AVAILABLE; always stops the server."""
    config = ""
    for name, version in models.items():
        shutil.copytree(version, root / "models" / name / "1")
        config += f'config {{ name: "{name}" base_path: "{root / "models" / name}" model_platform: "tensorflow" }}\n'
    (root / "models.config").write_text("model_config_list {\n" + config + "}\n")
    with ServerProcess(root / "serve.log", f"--model_config_file={root / 'models.config'}") as server:
        with ServingClient(server.address) as client:
            for name in models:
                client.wait_until_available(name, timeout=180)
        yield server.address


def grey_images(folder: Path, greys=GREYS) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, grey in enumerate(greys):
        path = folder / f"grey-{index:02d}.png"
        Image.new("RGB", (64, 48), (grey, grey, grey)).save(path)
        paths.append(path)
    return paths


def by_uncertainty(paths: list[Path]) -> list[str]:
    """File names sorted the way the recipe must order them (most uncertain first)."""
    def u(path: Path) -> float:
        return uncertainty([float(np.mean(read_image(path).pixels.astype(np.float32)) / 255.0)])
    return [p.name for p in sorted(paths, key=lambda p: -u(p))]


def collect(options: StreamOptions, predictor) -> list[dict]:
    stream = build_stream(options, predictor)
    try:
        return list(stream)
    finally:
        stream.close()


# ---- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("recipe_serve")
    with serve(root, {"odal": tiny_models["versions"][0], "bright": brightness_model(root / "bright")}) as address:
        yield address


@pytest.fixture
def predictor(server):
    made: list[Predictor] = []

    def make(model: str = "odal") -> Predictor:
        made.append(Predictor(server, model))
        return made[-1]

    yield make
    for item in made:
        item.close()


# ---- tests -------------------------------------------------------------------------------------------------

def test_tasks_carry_the_savedmodels_own_boxes_in_pixels(tiny_models, predictor, tmp_path):
    import tensorflow as tf

    source = tmp_path / "data"
    source.mkdir()
    for path in tiny_models["images"][:3]:
        shutil.copy(path, source / path.name)
    tasks = collect(StreamOptions(source, LABELS, threshold=0.0, order="file"), predictor())
    model = tf.saved_model.load(str(tiny_models["versions"][0]))
    assert [t["path"] for t in tasks] == sorted(p.name for p in tiny_models["images"][:3])
    for task in tasks:
        image = read_image(source / task["path"])
        out = model.signatures["serving_default"](input_tensor=tf.constant(image.pixels[np.newaxis]))
        num = int(out["num_detections"][0])
        boxes, scores = out["detection_boxes"][0, :num].numpy(), out["detection_scores"][0, :num].numpy()
        classes = out["detection_classes"][0, :num].numpy().astype(int)
        assert task["width"] == image.width and task["height"] == image.height
        assert task["meta"]["model_version"] == 1 and len(task["spans"]) == num > 0
        np.testing.assert_allclose(task["meta"]["scores"], scores, atol=1e-4)
        for span, (ymin, xmin, ymax, xmax), cls in zip(task["spans"], boxes, classes):
            expected = np.clip([xmin, ymin, xmax, ymax], 0, 1) * ([image.width, image.height] * 2)
            np.testing.assert_allclose([span["x"], span["y"], span["x"] + span["width"], span["y"] + span["height"]],
                                       expected, atol=0.02)
            assert span["label"] == LABELS[cls - 1] and span["type"] == "rect"
            xs, ys = [p[0] for p in span["points"]], [p[1] for p in span["points"]]
            np.testing.assert_allclose([min(xs), min(ys), max(xs), max(ys)], expected, atol=0.02)


def test_threshold_hides_low_scores_from_the_drawn_boxes(tiny_models, predictor, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    shutil.copy(tiny_models["images"][0], source / "a.jpg")
    (task,) = collect(StreamOptions(source, LABELS, threshold=0.99, order="file"), predictor())
    assert task["spans"] == [] and task["meta"]["model_version"] == 1 and "uncertainty" in task["meta"]


def test_uncertainty_order_puts_the_most_uncertain_images_first(predictor, tmp_path):
    paths = grey_images(tmp_path / "data")
    tasks = collect(StreamOptions(tmp_path / "data", LABELS, order="uncertainty", batch_size=len(paths)),
                    predictor("bright"))
    assert [t["meta"]["file"] for t in tasks] == by_uncertainty(paths)
    assert tasks[0]["meta"]["uncertainty"] > 0.99 and tasks[0]["spans"][0]["label"] == "square"


def test_with_small_batches_each_batch_is_sorted_on_the_fly(predictor, tmp_path):
    paths = grey_images(tmp_path / "data")
    tasks = collect(StreamOptions(tmp_path / "data", LABELS, order="uncertainty", batch_size=4), predictor("bright"))
    names = [t["meta"]["file"] for t in tasks]
    assert names[:4] == by_uncertainty(paths[:4]) and names[4:] == by_uncertainty(paths[4:])


def test_images_already_in_the_ledger_are_skipped(tiny_models, predictor, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    for path in tiny_models["images"][:4]:
        shutil.copy(path, source / path.name)
    first = collect(StreamOptions(source, LABELS, threshold=0.0, order="file"), predictor())
    work = tmp_path / "work"
    export = tmp_path / "answers.jsonl"
    export.write_text("".join(json.dumps(_answer(task)) + "\n" for task in first[:2]))
    with Ledger(work / "ledger.sqlite") as ledger:
        stats = ingest_export_file(export, ledger, LABELS, source, work / "images")
    assert stats["inserted"] == 2
    rest = collect(StreamOptions(source, LABELS, order="file", work_dir=work), predictor())
    assert [t["path"] for t in rest] == [t["path"] for t in first[2:]]


def test_serving_down_still_streams_every_image_with_one_warning(tiny_models, tmp_path, caplog):
    source = tmp_path / "data"
    source.mkdir()
    for path in tiny_models["images"][:5]:
        shutil.copy(path, source / path.name)
    down = Predictor(f"127.0.0.1:{free_port()}", "odal", retry_first=0.0, retry_max=0.0)  # asks at every batch
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="odal.recipe"):
        tasks = collect(StreamOptions(source, LABELS, order="uncertainty", batch_size=2), down)
    down.close()
    assert len(tasks) == 5 and all(t["spans"] == [] and "model_version" not in t["meta"] for t in tasks)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no suggestions" in warnings[0].getMessage()
    assert time.monotonic() - started < 30


def test_an_answer_made_from_a_task_round_trips_through_the_daemons_ingest(tiny_models, predictor, tmp_path):
    source = tmp_path / "data"
    (source / "sub").mkdir(parents=True)
    shutil.copy(tiny_models["images"][0], source / "sub" / "a.jpg")
    (task,) = collect(StreamOptions(source, LABELS, threshold=0.0, order="file"), predictor())
    assert task["path"] == "sub/a.jpg" and task["spans"]
    export = tmp_path / "exports" / "odal.jsonl"
    export.parent.mkdir()
    from odal.recipe.tasks import before_db

    export.write_text(json.dumps(before_db([_answer(task)])[0]) + "\n")
    work = tmp_path / "work"
    with Ledger(work / "ledger.sqlite") as ledger:
        stats = ingest_export_file(export, ledger, LABELS, source, work / "images")
        (row,) = ledger.accepted()
    assert stats["inserted"] == 1 and stats["set_aside"] == 0
    assert row["input_hash"] == str(task["_input_hash"]) and Path(row["image_path"]) == (source / "sub/a.jpg").resolve()
    assert (row["width"], row["height"]) == (task["width"], task["height"])
    expected = [{"label": s["label"], "xmin": s["x"] / task["width"], "ymin": s["y"] / task["height"],
                 "xmax": (s["x"] + s["width"]) / task["width"], "ymax": (s["y"] + s["height"]) / task["height"]}
                for s in task["spans"]]
    assert len(row["boxes"]) == len(expected)
    for got, want in zip(row["boxes"], expected):
        assert got["label"] == want["label"]
        np.testing.assert_allclose([got[k] for k in ("xmin", "ymin", "xmax", "ymax")],
                                   [want[k] for k in ("xmin", "ymin", "xmax", "ymax")], atol=1e-9)
    assert not any((work / "images").glob("*"))  # the path was stored, not a base64 blob


def test_prefetch_is_bounded_and_close_stops_the_thread(predictor, tmp_path):
    grey_images(tmp_path / "data", GREYS * 3)
    stream = build_stream(StreamOptions(tmp_path / "data", LABELS, order="file", batch_size=2, prefetch=3),
                          predictor("bright"))
    deadline = time.monotonic() + 30
    while stream._queue.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert stream._queue.qsize() == 3  # full, and the producer waits instead of reading ahead
    first = next(iter(stream))
    assert first["meta"]["file"] == "grey-00.png"
    stream.close()
    assert not any(t.name == "odal-prefetch" and t.is_alive() for t in threading.enumerate())


def _answer(task: dict) -> dict:
    """What Prodigy saves for an accepted task: the task as shown, plus the answer and a timestamp."""
    return {**task, "answer": "accept", "_timestamp": int(time.time()), "_view_id": "image_manual"}
