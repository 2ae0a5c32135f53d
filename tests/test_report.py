"""``odal report`` writes one static page that a real browser (headless Chromium) shows without an error: plots per
round, the gate's decisions, stage timings, and eval images with the annotators' boxes beside the served model's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from browser import find_chromium, open_page
from daemon_harness import make_workspace, odal_cli
from odal.daemon.config import load
from odal.serving.process import free_port
from tiny_workspace import workspace_of_the_tiny_run


@pytest.fixture
def chromium() -> str:
    found = find_chromium()
    if found is None:
        if os.environ.get("CI") or os.environ.get("ODAL_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is missing; CI installs it (.ci/run: apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def test_the_report_page_loads_in_chromium_with_every_image_and_the_served_models_boxes(tmp_path, tiny_models,
                                                                                         tiny_served, chromium):
    cfg = tiny_served
    made = odal_cli("report", "--workspace", str(cfg.path.parent), "--out", str(tmp_path / "report"))
    assert made.returncode == 0, made.stderr
    page = tmp_path / "report" / "index.html"
    assert f"wrote {page}" in made.stdout

    shot = Path(os.environ.get("ODAL_REPORT_SCREENSHOT") or tmp_path / "report.png")
    seen = open_page(page.as_uri(), screenshot=shot)
    assert seen["console"] == [] and seen["exceptions"] == [] and seen["failed"] == [], seen
    eval_images = sum(item["split"] == "eval" for item in map(json.loads, (
        tiny_models["dir"] / "round" / "annotations.jsonl").read_text().splitlines()))
    assert len(seen["images"]) == 3 + 2 * min(eval_images, 6)  # three plots, each eval image twice
    assert all(image["complete"] and image["naturalWidth"] > 0 for image in seen["images"]), seen["images"]
    assert f"detections of version 2 from the server at {cfg.serving_address}" in seen["text"]
    assert "Publish gate" in seen["text"] and "first version" in seen["text"]
    assert shot.stat().st_size > 10_000
    for image in (tmp_path / "report" / "images").iterdir():  # bounded: drawn at most 480 pixels a side
        with Image.open(image) as opened:
            assert max(opened.size) <= 480


def test_a_report_without_an_answering_server_says_so_and_shows_the_annotators_boxes(tmp_path, tiny_models):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = workspace_of_the_tiny_run(tmp_path / "ws", tiny_models, address)
    made = odal_cli("report", "--workspace", str(cfg.path.parent))
    assert made.returncode == 0, made.stderr
    text = (cfg.work_dir / "report" / "index.html").read_text()
    assert f"the server at {address} did not answer" in text and "annotators" in text
    assert list((cfg.work_dir / "report" / "images").glob("*-annotators.jpg"))
    assert not list((cfg.work_dir / "report" / "images").glob("*-model.jpg"))


def test_a_report_of_a_workspace_without_rounds_says_so(tmp_path, tiny_models):
    cfg = load(make_workspace(tmp_path / "ws", tiny_models["items"][:1]))
    made = odal_cli("report", "--workspace", str(cfg.path.parent))
    assert made.returncode == 0, made.stderr
    text = (cfg.work_dir / "report" / "index.html").read_text()
    assert "no eval images yet" in text and "no version published yet" in text
