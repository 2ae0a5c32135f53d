"""Exports carry TF Serving's warm-up file; ``odal serve`` replays it before a version serves, and loads a version
published into a watched base path at once instead of at its next poll."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image
from serving_fixtures import save_small_model

from odal.daemon.system.atomic import publish_dir
from odal.serving import warmup
from odal.serving.client import ServingClient
from odal.serving.process import ServerProcess


def test_every_export_carries_a_warmup_request_built_from_a_training_image(tiny_models):
    training = [np.asarray(Image.open(path).convert("RGB")) for path in tiny_models["images"]]
    for version in tiny_models["versions"]:
        found = warmup.requests(str(version))
        assert len(found) == 1
        signature, inputs, _ = found[0]
        assert signature == "serving_default" and list(inputs) == ["input_tensor"]
        image = inputs["input_tensor"]
        assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3
        assert any(image[0].shape == t.shape and np.array_equal(image[0], t) for t in training)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup")
    good, bad, watched = root / "good", root / "bad", root / "watched"
    for base in (good, bad, watched):
        base.mkdir()
    save_small_model(good / "1")
    warmup.write(good / "1", np.full((8, 8, 3), 7, np.uint8))
    shutil.copytree(good / "1", bad / "1")
    warmup.write(bad / "1", np.full((8, 8, 3), 7, np.uint8), input_key="not_an_input")
    shutil.copytree(good / "1", watched / "1")
    config = "model_config_list {\n" + "".join(
        f'config {{ name: "{b.name}" base_path: "{b}" model_platform: "tensorflow" }}\n'
        for b in (good, bad, watched)) + "}\n"
    (root / "models.config").write_text(config)
    return root


@pytest.fixture(scope="module")
def server(bases):
    # Polling once an hour: only the inotify watch can explain a new version loading within the test.
    with ServerProcess(bases / "serve.log", f"--model_config_file={bases / 'models.config'}",
                       "--file_system_poll_wait_seconds=3600", "--max_num_load_retries=0") as process:
        client = ServingClient(process.address, timeout=30)
        try:
            client.wait_until_available("good", 1, timeout=120)
            yield client
        finally:
            client.close()


def test_a_version_whose_warmup_request_fails_does_not_serve(server):
    deadline = time.monotonic() + 60
    while (status := server.model_status("bad")[0]).state != "END" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status.state == "END" and "not_an_input" in status.error_message
    assert [(s.version, s.state) for s in server.model_status("good")] == [(1, "AVAILABLE")]


def test_a_version_renamed_into_a_watched_base_path_loads_without_waiting_for_the_poll(server, bases):
    server.wait_until_available("watched", 1, timeout=120)
    shutil.copytree(bases / "good" / "1", bases / "watched" / ".staging-2")
    publish_dir(bases / "watched" / ".staging-2", bases / "watched" / "2")
    assert server.wait_until_available("watched", 2, timeout=60) == 2  # the next poll is an hour away
