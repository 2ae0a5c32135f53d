"""A version whose graph is already loaded is loaded by reading only its variables (serving/reuse.py): it answers
exactly as a full load of that version, the version serving before it keeps its own weights (also through a real
``odal serve`` swapping versions under requests), and a version whose graph differs is loaded whole."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from PIL import Image
from serving_fixtures import save_small_model

from odal.daemon.system.atomic import publish_dir
from odal.serving.client import ServingClient
from odal.serving.errors import ServingError
from odal.serving.loader import Servable
from odal.serving.process import ServerProcess
from odal.serving.reuse import Loader

OUTPUTS = ["detection_boxes", "detection_scores", "detection_classes", "raw_detection_scores"]


@pytest.fixture(scope="module")
def image(tiny_models):
    return np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"), dtype=np.uint8)[np.newaxis]


@pytest.fixture(scope="module")
def reference(tiny_models, image):
    """A loader that has loaded tiny version 1 whole, and what full loads of versions 1 and 2 answer."""
    v1, v2 = tiny_models["versions"]
    load = Loader()
    first = load(str(v1))
    return load, first, [_answer(first, image), _answer(Servable(str(v2)), image)]


def _answer(servable, image):
    return servable.run("serving_default", {"input_tensor": image}, OUTPUTS)


def _same(found, expected) -> bool:
    return all(np.allclose(found[key], expected[key], atol=1e-5, rtol=0) for key in OUTPUTS)


def test_a_weights_only_version_answers_as_its_full_load_and_the_old_version_keeps_its_weights(
        tiny_models, image, reference):
    load, first, full_answers = reference
    v1, v2 = tiny_models["versions"]
    assert (v1 / "saved_model.pb").read_bytes() == (v2 / "saved_model.pb").read_bytes()  # the worker's export
    assert not _same(full_answers[0], full_answers[1])  # the rounds' weights differ: the checks can tell them apart
    second = load(str(v2))
    assert second.model is first.model  # version 1's functions were reused, not loaded again
    assert _same(_answer(second, image), full_answers[1])
    assert _same(_answer(first, image), full_answers[0])  # nothing of version 1 was overwritten


def test_a_version_whose_graph_differs_is_loaded_whole(image, reference, tmp_path):
    load, first, _ = reference
    small = load(str(save_small_model(tmp_path / "other")))
    assert small.model is not first.model
    mean = small.run("serving_default", {"input_tensor": image}, ["mean"])["mean"]
    np.testing.assert_allclose(mean, image.astype(np.float32).mean(axis=(1, 2)), rtol=1e-5)


def test_odal_serve_swaps_to_a_weights_only_version_while_the_old_one_answers_with_its_own_weights(
        tiny_models, image, reference, tmp_path):
    full_answers = reference[2]
    v1, v2 = tiny_models["versions"]
    base = tmp_path / "models" / "m"
    base.mkdir(parents=True)
    shutil.copytree(v1, base / "1")
    with ServerProcess(tmp_path / "serve.log", "--model_name=m", f"--model_base_path={base}",
                       rest_port=0) as server, ServingClient(server.address, timeout=60) as client:
        client.wait_until_available("m", 1, timeout=180)
        old_answers, errors, stop = [], [], threading.Event()

        def ask_version_1():
            while not stop.is_set():
                try:
                    found, _ = client.predict_tensors("m", {"input_tensor": image}, version=1)
                except ServingError as error:  # NOT_FOUND once version 1 is unloaded
                    errors.append(error.code)
                    return
                old_answers.append(found)

        asker = threading.Thread(target=ask_version_1)
        asker.start()
        try:
            staged = tmp_path / "staging"
            shutil.copytree(v2, staged)
            publish_dir(staged, base / "2")
            client.wait_until_available("m", 2, timeout=180)
            new, _ = client.predict_tensors("m", {"input_tensor": image}, version=2)
        finally:
            stop.set()
            asker.join(60)
        log = (tmp_path / "serve.log").read_text()
    assert "restored its variables only" in log
    assert _same(new, full_answers[1])
    assert old_answers and all(_same(answer, full_answers[0]) for answer in old_answers)
    assert errors in ([], ["NOT_FOUND"])
