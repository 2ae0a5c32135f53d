"""A version whose graph is already loaded is loaded by reading only its variables (serving/reuse.py): through a
real ``odal serve`` swapping versions under requests, the new version answers exactly as a full load of it, and the
version serving before it keeps answering with its own weights, during the swap and after; a version whose graph
differs is loaded whole."""

from __future__ import annotations

import shutil
import threading

import numpy as np
from PIL import Image
from serving_fixtures import save_small_model

from odal.daemon.system.atomic import publish_dir
from odal.serving.client import ServingClient
from odal.serving.errors import ServingError
from odal.serving.loader import Servable
from odal.serving.process import ServerProcess
from odal.serving.reuse import Loader

OUTPUTS = ["detection_boxes", "detection_scores", "detection_classes", "raw_detection_scores"]


def _same(found, expected) -> bool:
    return all(np.allclose(found[key], expected[key], atol=1e-5, rtol=0) for key in OUTPUTS)


def test_odal_serve_loads_a_weights_only_version_into_the_loaded_graph_without_touching_the_old_one(
        tiny_models, tmp_path):
    v1, v2 = tiny_models["versions"]
    assert (v1 / "saved_model.pb").read_bytes() == (v2 / "saved_model.pb").read_bytes()  # the worker's export
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"), dtype=np.uint8)[np.newaxis]
    full_v2 = Servable(str(v2)).run("serving_default", {"input_tensor": image}, OUTPUTS)
    base = tmp_path / "models" / "m"
    base.mkdir(parents=True)
    shutil.copytree(v1, base / "1")
    config = tmp_path / "models.config"  # every version stays loaded: version 1 can be asked after the swap
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" '
                      f'model_version_policy {{ all {{}} }} }} }}\n')
    with ServerProcess(tmp_path / "serve.log", f"--model_config_file={config}", rest_port=0) as server, \
            ServingClient(server.address, timeout=60) as client:
        client.wait_until_available("m", 1, timeout=180)

        def ask(version):
            return client.predict_tensors("m", {"input_tensor": image}, version=version)[0]

        full_v1 = ask(1)  # version 1 was loaded whole
        assert not _same(full_v1, full_v2)  # the rounds' weights differ: the checks below can tell them apart
        during, errors, stop = [], [], threading.Event()

        def keep_asking_version_1():
            while not stop.is_set():
                try:
                    during.append(ask(1))
                except ServingError as error:
                    errors.append(error)
                    return

        asker = threading.Thread(target=keep_asking_version_1)
        asker.start()
        try:
            staged = tmp_path / "staging"
            shutil.copytree(v2, staged)
            publish_dir(staged, base / "2")
            client.wait_until_available("m", 2, timeout=180)
            new = ask(2)
        finally:
            stop.set()
            asker.join(60)
        after = ask(1)
    assert "same graph as a loaded version; restored its variables only" in (tmp_path / "serve.log").read_text()
    assert _same(new, full_v2)
    assert not errors and during and all(_same(answer, full_v1) for answer in during)
    assert _same(after, full_v1)


def test_a_version_whose_graph_differs_is_loaded_whole(tmp_path):
    image = np.full((1, 4, 4, 3), 9, np.uint8)
    load = Loader()
    first = load(str(save_small_model(tmp_path / "a")))
    other = load(str(save_small_model(tmp_path / "b", filler_floats=3)))
    assert other.model is not first.model
    np.testing.assert_allclose(other.run("serving_default", {"input_tensor": image}, ["mean"])["mean"], [[9, 9, 9]])
