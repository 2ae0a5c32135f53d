"""Round time: odal's long-lived worker versus the stock OD API tools chained, one process per stage per round.

Same data (generated shapes), same tiny SSD pipeline, same steps per round, 2 cores.  The stock chain is what
users glue together today: convert to TFRecords, ``model_main_tf2`` (train_loop) to the cumulative step, the
evaluation (eval_continuously on the latest checkpoint), ``exporter_main_v2`` (export_inference_graph); each a
fresh Python process that imports TensorFlow and builds/traces the model again.  (They run through odal's compat
module, without which the OD API does not import on TF 2.21 at all.)

    .venv/bin/python bench/bench_round.py [--rounds 3] [--steps 100] [--images 32]

Writes bench/results/rounds.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worker_jobs import CONFIG, Worker, arguments, round_job, shapes, write_result, write_round

PRELUDE = "import sys, json; from odal.daemon.worker import odapi_compat; "


def _py(code: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", PRELUDE + code], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def stock_round(root: Path, round_dir: Path, number: int, steps: int, label_map: Path, labels: list[str]) -> dict:
    pipeline = round_dir / "stock.config"
    model_dir = root / "stock_model"
    export_dir = root / "stock_export" / str(number)
    t = {}
    t["records"] = _py(f"from odal.daemon.worker.tfrecords import write_records; from pathlib import Path; "
                       f"write_records(Path({str(round_dir / 'annotations.jsonl')!r}), Path({str(round_dir)!r}))")
    _py(f"from odal.daemon.worker import session; from pathlib import Path; "
        f"c = session.load_configs(Path({str(CONFIG)!r}), Path({str(label_map)!r}), {len(labels)}, "
        f"Path({str(round_dir / 'train.record')!r}), Path({str(round_dir / 'eval.record')!r})); "
        f"session.write_pipeline(c, Path({str(pipeline)!r}))")
    t["train"] = _py(f"from object_detection import model_lib_v2; model_lib_v2.train_loop("
                     f"pipeline_config_path={str(pipeline)!r}, model_dir={str(model_dir)!r}, "
                     f"train_steps={steps * number}, checkpoint_every_n={steps}, record_summaries=False)")
    t["evaluate"] = _py(f"from object_detection import model_lib_v2; model_lib_v2.eval_continuously("
                        f"pipeline_config_path={str(pipeline)!r}, model_dir={str(model_dir)!r}, "
                        f"checkpoint_dir={str(model_dir)!r}, wait_interval=0, timeout=1)")
    t["export"] = _py(f"from object_detection import exporter_lib_v2; from object_detection.protos import "
                      f"pipeline_pb2; from google.protobuf import text_format; p = pipeline_pb2."
                      f"TrainEvalPipelineConfig(); text_format.Parse(open({str(pipeline)!r}).read(), p); "
                      f"exporter_lib_v2.export_inference_graph('image_tensor', p, {str(model_dir)!r}, "
                      f"{str(export_dir)!r})")
    t["total"] = sum(t.values())
    return t


def odal_rounds(root: Path, round_dirs: list[Path], steps: int, label_map: Path, labels: list[str]) -> list[dict]:
    worker = Worker(root / "worker.log")
    out = []
    started = time.monotonic()
    for number, round_dir in enumerate(round_dirs, 1):
        message = worker.run(round_job(root, round_dir, number, steps, label_map, labels))
        timings = dict(message.timings)
        timings["total"] = time.monotonic() - started  # includes process start + import in round 1
        timings["first_step"] = message.train["first_step_seconds"]
        timings["how"] = message.export
        out.append(timings)
        started = time.monotonic()
    worker.stop()
    return out


def main() -> int:
    args = arguments(3, 100, 32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items, labels, label_map = shapes(root, args.images)
        per_round = len(items) // args.rounds
        round_dirs = []
        for number in range(1, args.rounds + 1):  # each round sees all annotations so far, as the daemon does
            round_dirs.append(root / "rounds" / str(number))
            write_round(round_dirs[-1], items[: per_round * number], labels, 0.2)
        ours = odal_rounds(root, round_dirs, args.steps, label_map, labels)
        stock = [stock_round(root, d, n, args.steps, label_map, labels) for n, d in enumerate(round_dirs, 1)]
    lines = [f"# Round time: odal worker vs stock OD API tools ({args.rounds} rounds x {args.steps} steps, "
             f"{args.images} generated images, tiny SSD MobileNetV2 128 px, 2 cores)", "",
             "| round | path | records s | train s | eval s | export s | export writes | total s |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for number, (o, s) in enumerate(zip(ours, stock), 1):
        lines.append(f"| {number} | odal worker | {o['records']:.1f} | {o['train']:.1f} | {o.get('evaluate', 0):.1f} "
                     f"| {o['export']:.1f} | {'weights only' if o['how'] == 'weights' else o['how']} "
                     f"| {o['total']:.1f} |")
        lines.append(f"| {number} | stock chain | {s['records']:.1f} | {s['train']:.1f} | {s['evaluate']:.1f} "
                     f"| {s['export']:.1f} | full | {s['total']:.1f} |")
    total_ours, total_stock = sum(o["total"] for o in ours), sum(s["total"] for s in stock)
    lines += ["", f"All rounds: odal {total_ours:.0f} s, stock {total_stock:.0f} s "
              f"({total_stock / total_ours:.1f}x). odal's first train step per round: "
              + ", ".join(f"{o['first_step']:.2f} s" for o in ours) + "."]
    write_result("rounds.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
