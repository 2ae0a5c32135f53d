"""mAP@0.5 on a fixed held-out test set after 40, 80 and 120 annotations: the pretrained start vs from scratch.

Data: ``../shared/datasets/raccoon`` (200 photos, one class).  A fixed seeded shuffle splits it once into a test set
(60 images, only ever evaluated), a validation set (20 images, what recipes are tuned on) and a pool of 120 from
which the first 40, 80, 120 are "annotated".  Each run trains one fresh model for the same number of steps with the
round worker's own session (``odal.daemon.worker.session``: the same train step and COCO evaluation a round uses)
and evaluates it on the test (or validation) set.  Both starts use the same pipeline (odal init's ssdlite config);
"scratch" only leaves out the fine-tuning checkpoint.  ``--starts tiny``: the tiny SSD config as it is (128 px,
its own Adam recipe) from scratch, odal's model before the pretrained start, for the same steps.

    nice -n 10 .venv/bin/python bench/bench_pretrained.py                     # the table -> bench/results/pretrained.md
    nice -n 10 .venv/bin/python bench/bench_pretrained.py --tune --sizes 40 \\
        --set lr=0.01 --set size=300 ...                                      # one recipe on the validation set
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
sys.path.insert(0, str(REPO / "bench"))

from odal.daemon.sources import datasets  # noqa: E402
from odal.daemon.worker import odapi_compat  # noqa: E402, F401  (must precede tensorflow)
from odal.daemon.worker import pretrained  # noqa: E402
from odal.daemon.worker import session as sessions  # noqa: E402
from odal.daemon.worker.tfrecords import write_records  # noqa: E402
from odal.daemon.commands.init import MODELS, START_TYPE  # noqa: E402
from odal.daemon.rounds.contracts import FineTune  # noqa: E402

RECIPE = {"size": 224, "lr": 0.02, "steps": 300, "type": START_TYPE, "schedule": "constant", "crop": 0, "freeze": ""}


def splits(seed: int = 12) -> tuple[list, list, list]:
    items = datasets.read_voc(RACCOON)
    random.Random(seed).shuffle(items)
    return items[:60], items[60:80], items[80:]


def write_round(round_dir: Path, train: list, held_out: list) -> None:
    round_dir.mkdir(parents=True, exist_ok=True)
    with open(round_dir / "annotations.jsonl", "w") as out:
        for split, items in (("train", train), ("eval", held_out)):
            for item in items:
                boxes = [{"label": "raccoon", "label_id": 1, "xmin": x0 / item.width, "ymin": y0 / item.height,
                          "xmax": x1 / item.width, "ymax": y1 / item.height} for _, x0, y0, x1, y1 in item.boxes]
                out.write(json.dumps({"input_hash": item.image.name, "image_path": str(item.image),
                                      "boxes": boxes, "split": split}) + "\n")
    write_records(round_dir / "annotations.jsonl", round_dir)


def pipeline(recipe: dict, path: Path, model: str = "ssdlite") -> Path:
    """odal init's ssdlite pipeline.config with the recipe's changes (or the tiny config as it is)."""
    from google.protobuf import text_format
    from object_detection.protos import pipeline_pb2

    if model == "tiny":
        path.write_text(MODELS["tiny"].read_text())
        return path
    proto = pipeline_pb2.TrainEvalPipelineConfig()
    text_format.Merge(MODELS["ssdlite"].read_text().replace('"PRETRAINED_START"', '""'), proto)
    resizer = proto.model.ssd.image_resizer.fixed_shape_resizer
    resizer.height = resizer.width = recipe["size"]
    momentum = proto.train_config.optimizer.momentum_optimizer
    if recipe["schedule"] == "cosine":
        cosine = momentum.learning_rate.cosine_decay_learning_rate
        cosine.learning_rate_base, cosine.total_steps = recipe["lr"], recipe["steps"]
        cosine.warmup_learning_rate, cosine.warmup_steps = recipe["lr"] / 4, min(50, recipe["steps"] // 10)
    else:
        momentum.learning_rate.constant_learning_rate.learning_rate = recipe["lr"]
    if recipe["crop"]:
        proto.train_config.data_augmentation_options.add().ssd_random_crop.SetInParent()
    if recipe["freeze"]:  # freeze_variables: the config's if "", none if "-", else this regex
        del proto.train_config.freeze_variables[:]
        if recipe["freeze"] != "-":
            proto.train_config.freeze_variables.append(recipe["freeze"])
    path.write_text(text_format.MessageToString(proto))
    return path


def run(recipe: dict, start: str, train: list, held_out: list, root: Path, label_map: Path) -> dict:
    round_dir = root / f"{start}-{len(train)}-{time.monotonic_ns()}"
    write_round(round_dir, train, held_out)
    config = pipeline(recipe, round_dir / "recipe.config", "tiny" if start == "tiny" else "ssdlite")
    fine_tune = None
    if start == "pretrained":
        fine_tune = FineTune(str(pretrained.checkpoint_prefix(root / "start")), recipe["type"])
    configs = sessions.load_configs(config, label_map, 1, round_dir / "train.record", round_dir / "eval.record",
                                    fine_tune)
    sessions.adjustments(configs)
    session = sessions.ModelSession(configs)
    started, cpu = time.monotonic(), time.process_time()
    trained = session.train(configs, recipe["steps"], None, fine_tune, lambda *a: None)
    train_s, train_cpu_s = time.monotonic() - started, time.process_time() - cpu
    started = time.monotonic()
    metrics = session.evaluate(configs)
    return {"start": start, "n": len(train), "mAP@0.5": metrics["DetectionBoxes_Precision/mAP@.50IOU"],
            "mAP": metrics["DetectionBoxes_Precision/mAP"], "train_s": round(train_s, 1),
            "train_cpu_s": round(train_cpu_s, 1),
            "first_step_s": round(trained["first_step_seconds"], 1), "eval_s": round(time.monotonic() - started, 1),
            "loss": round(trained["loss"], 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="40,80,120")
    parser.add_argument("--starts", default="pretrained,scratch", help="pretrained, scratch (the same SSDLite "
                        "pipeline from random weights), tiny (the tiny SSD config from scratch, as it is)")
    parser.add_argument("--tune", action="store_true", help="evaluate on the validation set, not the test set")
    parser.add_argument("--set", action="append", default=[], help="recipe KEY=VALUE (size, lr, steps, type, "
                        "schedule, crop, freeze: a freeze_variables regex)")
    parser.add_argument("--out", default="pretrained.md")
    args = parser.parse_args()
    recipe = dict(RECIPE)
    for item in args.set:
        key, _, value = item.partition("=")
        recipe[key] = type(RECIPE[key])(value)
    load = os.getloadavg()
    test, validation, pool = splits()
    held_out = validation if args.tune else test
    rows = []
    with tempfile.TemporaryDirectory(prefix="odal-bench-pretrained-") as tmp:
        root = Path(tmp)
        label_map = root / "label_map.pbtxt"
        datasets.write_label_map(label_map, ["raccoon"])
        pretrained.write_start(root / "start", ["raccoon"], pipeline(recipe, root / "start.config"))
        for n in [int(s) for s in args.sizes.split(",")]:
            for start in args.starts.split(","):
                row = run(recipe, start, pool[:n], held_out, root, label_map)
                print(json.dumps(row), flush=True)
                rows.append(row)
    lines = [f"# Pretrained start vs from scratch (raccoon, {'validation' if args.tune else 'test'} set of "
             f"{len(held_out)} held-out images)", "",
             "`.venv/bin/python bench/bench_pretrained.py " + " ".join(sys.argv[1:]) + f"` on "
             f"{os.cpu_count()} cores (1-min load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
             "end, this bench included).", "", f"Recipe: {json.dumps(recipe)}", "",
             "| annotations | start | mAP@0.5 | mAP | train s | train CPU s | first step s | eval s | final loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['start']} | {r['mAP@0.5']:.3f} | {r['mAP']:.3f} | {r['train_s']} | {r['train_cpu_s']} | "
              f"{r['first_step_s']} | {r['eval_s']} | {r['loss']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.tune:
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        (REPO / "bench" / "results" / args.out).write_text(text)
    else:
        with open(REPO / "bench" / "results" / "pretrained_tuning.md", "a") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
