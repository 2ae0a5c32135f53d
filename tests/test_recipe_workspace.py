"""The recipe takes its labels, paths, server and model from the workspace, and waits for a loading model.

Against a real ``odal serve`` subprocess: ``odal`` is the brightness SavedModel of test_recipe.py (one box of
class 1 whose score is the image's mean brightness), ``late`` and ``later`` start with no version at all (the
server answers NOT_FOUND, as while a first version loads) and get one while the test runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from odal.daemon.commands.demo import write_workspace
from odal.common.errors import ConfigError
from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.store.ledger import Ledger
from odal.recipe.odal_recipe import correct
from odal.recipe.predictor import Predictor
from odal.serving.client import ServingClient
from odal.serving.process import ServerProcess, free_port
from test_recipe import brightness_model, grey_images

MAP_ORDER = ["disc", "square"]  # the label map: id 1 is disc


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("recipe_ws_serve")
    bright = brightness_model(root / "bright")
    shutil.copytree(bright, root / "models" / "odal" / "1")
    config = ""
    for name in ("odal", "late", "later"):
        (root / "models" / name).mkdir(parents=True, exist_ok=True)
        config += f'config {{ name: "{name}" base_path: "{root / "models" / name}" model_platform: "tensorflow" }}\n'
    (root / "models.config").write_text("model_config_list {\n" + config + "}\n")
    with ServerProcess(root / "serve.log", f"--model_config_file={root / 'models.config'}") as server:
        with ServingClient(server.address) as client:
            client.wait_until_available("odal", timeout=180)
        yield {"address": server.address, "bright": bright, "models": root / "models"}


def workspace(root: Path, address: str, greys=(128, 60, 200)) -> Path:
    """A workspace folder whose label map says disc (id 1), square (id 2), serving ``odal`` at ``address``."""
    grey_images(root / "images", greys)
    write_workspace(root / "ws", root / "images", MAP_ORDER, steps=10, per_round=2, serving_address=address)
    return root / "ws"


def run(ws: str | Path, source: Path, **options) -> tuple[dict, list[dict]]:
    components = correct("ds", str(source), workspace=str(ws), order="file", threshold=0.0, **options)
    try:
        return components, list(components["stream"])
    finally:
        components["on_exit"](None)


def test_labels_come_from_the_label_map_so_a_reordered_label_option_cannot_swap_classes(served, tmp_path):
    ws = workspace(tmp_path, served["address"])
    components, tasks = run(ws, tmp_path / "images", label="square,disc")  # not the map's order
    assert components["config"]["labels"] == MAP_ORDER
    assert tasks and all([s["label"] for s in t["spans"]] == ["disc"] for t in tasks)  # class 1 is disc
    components, tasks = run(ws, tmp_path / "images", label=["square"])  # a subset: disc boxes are not suggested
    assert components["config"]["labels"] == ["square"] and all(t["spans"] == [] for t in tasks)
    assert all(t["meta"]["model_version"] == 1 for t in tasks)
    with pytest.raises(ConfigError, match=r"--label triangle: not in the label map .*label_map\.pbtxt"):
        correct("ds", str(tmp_path / "images"), label="disc,triangle", workspace=str(ws))


@pytest.mark.parametrize("form", ["folder", "odal.toml"])
def test_workspace_is_the_folder_or_its_toml_and_gives_paths_server_and_model(served, tmp_path, form):
    ws = workspace(tmp_path, served["address"])
    _components, first = run(ws, tmp_path / "images")  # no --label, --server, --model, --data-dir
    assert [t["path"] for t in first] == ["grey-00.png", "grey-01.png", "grey-02.png"]  # relative to data_dir
    assert all(t["meta"]["model_version"] == 1 and t["spans"] for t in first)
    export = tmp_path / "answer.jsonl"
    export.write_text(json.dumps({**first[0], "answer": "accept", "_timestamp": 1}) + "\n")
    with Ledger(ws / "work" / "ledger.sqlite") as ledger:
        assert ingest_export_file(export, ledger, MAP_ORDER, tmp_path / "images", ws / "work" / "images")["inserted"]
    _components, rest = run(ws if form == "folder" else ws / "odal.toml", tmp_path / "images")
    assert [t["path"] for t in rest] == ["grey-01.png", "grey-02.png"]  # the work dir's ledger: answered skipped


def test_a_missing_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no odal.toml at .*give the workspace folder or its odal.toml"):
        correct("ds", str(tmp_path), workspace=str(tmp_path))


def publish_version(source, target):
    """Publish a version as odal and every TF Serving publisher must: copied aside, then renamed in (``odal serve``
    sees a folder the moment it appears, by inotify; a half-copied one fails to load and is retried a minute later)."""
    aside = target.parent / f".copying-{target.name}"
    shutil.copytree(source, aside)
    os.rename(aside, target)


def test_the_first_images_wait_for_a_model_that_is_still_loading(served, tmp_path, caplog):
    ws = workspace(tmp_path, served["address"])
    arrive = threading.Timer(2.0, publish_version, (served["bright"], served["models"] / "late" / "1"))
    arrive.start()
    with caplog.at_level(logging.INFO, logger="odal.recipe"):
        _components, tasks = run(ws, tmp_path / "images", model="late", wait=60)
    arrive.join()
    assert len(tasks) == 3 and all(t["spans"] and t["meta"]["model_version"] == 1 for t in tasks)
    waiting = [r.getMessage() for r in caplog.records if "not loaded yet" in r.getMessage()]
    assert len(waiting) == 1 and "waiting up to 60s" in waiting[0]


def test_after_a_failure_the_model_is_asked_again_within_seconds_not_30(served, tmp_path):
    image = grey_images(tmp_path / "images", (128,))[0]
    from odal.recipe.tasks import read_image

    pixels = read_image(image).pixels
    predictor = Predictor(served["address"], "later", wait_seconds=0)
    try:
        assert predictor.detect_many([pixels]) is None  # no version: no suggestions, a retry is scheduled
        publish_version(served["bright"], served["models"] / "later" / "1")
        with ServingClient(served["address"]) as client:
            client.wait_until_available("later", timeout=60)
        available = time.monotonic()
        while (found := predictor.detect_many([pixels])) is None and time.monotonic() - available < 15:
            time.sleep(0.1)
        assert found is not None and found[0].model_version == 1
        assert time.monotonic() - available < 5  # the first retry comes after 1 s (then 2, 4, ... at most 30)
    finally:
        predictor.close()


def test_a_server_that_is_down_is_not_waited_for(tmp_path):
    predictor = Predictor(f"127.0.0.1:{free_port()}", "odal", wait_seconds=60)
    started = time.monotonic()
    try:
        assert predictor.wait_for_model() is None
    finally:
        predictor.close()
    assert time.monotonic() - started < 10
