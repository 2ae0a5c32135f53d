"""Shared fixtures. Real things only: real OD API models trained here, real files, real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from odal.common.errors import RoundFailed
from odal.daemon.rounds.contracts import RoundJob, RoundResult
from odal.daemon.rounds.worker_client import Worker
from odal.daemon.sources import datasets

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RACCOON = SHARED / "datasets" / "raccoon"
PRODIGY_FIXTURES = SHARED / "prodigy"
TINY_CONFIG = REPO / "daemon" / "assets" / "ssd_mobilenet_v2_tiny.config"
# Long tests whose behaviour a shorter test of make test also covers (the CI time guide): ODAL_LONG_TESTS=1 runs them.
long_test = pytest.mark.skipif(os.environ.get("ODAL_LONG_TESTS") != "1",
                               reason="long; ODAL_LONG_TESTS=1 runs it (see the README's test section)")


def run_worker_jobs(jobs: list[RoundJob], log_path: Path) -> list[RoundResult]:
    """Run round jobs, in order, in one real worker child through the daemon's client; their results."""
    worker = Worker(log_path)
    try:
        return [worker.run(job) for job in jobs]
    except RoundFailed as error:
        raise AssertionError(f"{error}\n{log_path.read_text()[-4000:]}") from None
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Two real SavedModels of a tiny SSD MobileNetV2 trained on generated shapes (two rounds, one worker).

    Returns {"dir", "label_map", "labels", "images", "versions": [path1, path2], "checkpoints": [...]}; the
    TensorBoard events of both rounds are in ``dir``/tensorboard.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    items = datasets.generate_shapes(root / "images", 24, seed=7)
    labels = list(datasets.SHAPE_LABELS)
    label_map = root / "label_map.pbtxt"
    datasets.write_label_map(label_map, labels)
    round_dir = root / "round"
    round_dir.mkdir()
    with open(round_dir / "annotations.jsonl", "w") as out:
        for index, item in enumerate(items):
            boxes = [
                {"label": label, "label_id": labels.index(label) + 1, "xmin": x0 / item.width,
                 "ymin": y0 / item.height, "xmax": x1 / item.width, "ymax": y1 / item.height}
                for label, x0, y0, x1, y1 in item.boxes
            ]
            out.write(json.dumps({"input_hash": str(index), "image_path": str(item.image), "boxes": boxes,
                                  "split": "eval" if index % 6 == 0 else "train"}) + "\n")
    jobs = [RoundJob(round_id=number, round_dir=round_dir, pipeline_config=TINY_CONFIG, label_map=label_map,
                     num_classes=len(labels), steps=20,
                     init_checkpoint=str(root / "ckpt-1" / "ckpt") if number == 2 else None,
                     checkpoint_dir=root / f"ckpt-{number}", export_dir=root / "export" / str(number),
                     tensorboard_dir=root / "tensorboard")  # test_tensorboard reads what the rounds logged
            for number in (1, 2)]
    results = run_worker_jobs(jobs, root / "worker.log")
    return {
        "dir": root, "label_map": label_map, "labels": labels, "images": [item.image for item in items],
        "items": items, "versions": [root / "export" / "1", root / "export" / "2"],
        "checkpoints": [r.checkpoint for r in results], "results": results,
    }


@pytest.fixture(scope="session")
def tiny_served(tiny_models, tmp_path_factory):
    """The config of a workspace holding the tiny models' two rounds (``tiny_workspace``), versions 1 and 2,
    with ``odal serve`` serving it (version 2 AVAILABLE at the start).  A test that changes it puts it back."""
    from odal.serving.client import ServingClient
    from odal.serving.process import ServerProcess, free_port
    from tiny_workspace import workspace_of_the_tiny_run

    root = tmp_path_factory.mktemp("tiny_served")
    port = free_port()
    cfg = workspace_of_the_tiny_run(root / "ws", tiny_models, f"127.0.0.1:{port}")
    with ServerProcess(root / "serve.log", f"--model_name={cfg.model_name}", f"--model_base_path={cfg.base_path}",
                       port=port, rest_port=0) as server:
        with ServingClient(server.address, timeout=60) as client:
            assert client.wait_until_available(cfg.model_name, 2, timeout=180) == 2
        yield cfg


@pytest.fixture
def raccoon() -> Path:
    if not RACCOON.is_dir():
        if os.environ.get("CI") or os.environ.get("ODAL_REQUIRE_RACCOON"):
            pytest.fail(f"{RACCOON} is missing; CI must run with ../shared beside the clone")
        pytest.skip(f"the raccoon data set is not at {RACCOON} (../shared is absent)")
    return RACCOON
