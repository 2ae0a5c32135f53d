"""What the round benchmarks share: generated annotations, a round job, and the daemon's worker client
(odal.daemon.rounds.worker_client.Worker) to run jobs in a real worker child."""

from __future__ import annotations

import argparse
from pathlib import Path

from odal.daemon.rounds.contracts import RoundJob
from odal.daemon.rounds.inputs import write_annotations
from odal.daemon.rounds.worker_client import Worker
from odal.daemon.sources import datasets

__all__ = ["CONFIG", "Worker", "arguments", "round_job", "shapes", "write_result", "write_round"]

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "daemon" / "assets" / "ssd_mobilenet_v2_tiny.config"


def arguments(rounds: int, steps: int, images: int) -> argparse.Namespace:
    """``--rounds``, ``--steps`` and ``--images`` with these defaults."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--images", type=int, default=images)
    return parser.parse_args()


def shapes(root: Path, images: int) -> tuple[list, list[str], Path]:
    """``images`` generated shape images under ``root/images``, their labels, and a label map written for them."""
    items = datasets.generate_shapes(root / "images", images, seed=5)
    labels = list(datasets.SHAPE_LABELS)
    label_map = root / "label_map.pbtxt"
    datasets.write_label_map(label_map, labels)
    return items, labels, label_map


def write_round(round_dir: Path, items: list, labels: list[str], eval_fraction: float) -> None:
    """``round_dir/annotations.jsonl`` accepting ``items`` (generated shapes) with their boxes, as the daemon writes it."""
    accepted = [{"input_hash": str(i), "image_path": str(item.image),
                 "boxes": [{"label": b[0], "xmin": b[1] / item.width, "ymin": b[2] / item.height,
                            "xmax": b[3] / item.width, "ymax": b[4] / item.height} for b in item.boxes]}
                for i, item in enumerate(items)]
    round_dir.mkdir(parents=True, exist_ok=True)
    write_annotations(round_dir / "annotations.jsonl", accepted, labels, eval_fraction)


def round_job(root: Path, round_dir: Path, number: int, steps: int, label_map: Path, labels: list[str]) -> RoundJob:
    """Round ``number``'s job, continuing round ``number - 1``'s checkpoint under ``root``."""
    return RoundJob(round_id=number, round_dir=round_dir, pipeline_config=CONFIG, label_map=label_map,
                    num_classes=len(labels), steps=steps,
                    init_checkpoint=str(root / "odal_ckpt" / str(number - 1) / "ckpt") if number > 1 else None,
                    checkpoint_dir=root / "odal_ckpt" / str(number), export_dir=root / "odal_export" / str(number))


def write_result(name: str, lines: list[str]) -> None:
    """Print a benchmark's Markdown and write it to ``bench/results/NAME``."""
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / name).write_text(text)
