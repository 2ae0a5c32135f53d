"""Training throughput: odal's worker loop versus the stock ``model_main_tf2`` loop, steady steps/s.

Same pipeline.config, same TFRecords (generated 640x480 JPEGs with shapes), same batch size, 2 cores.  Each
measurement is a fresh child process, run one after the other in an interleaved order (stock, odal variants,
stock, ...), so that the machine's load falls on both alike.

* stock: ``model_lib_v2.train_loop`` as ``model_main_tf2`` calls it (its default ``num_steps_per_iteration`` of
  100 steps per ``tf.function`` call).  Steady = the loop's own log line "Step 200 per-step time" (steps 101-200;
  the first 100 include tracing).
* odal: a worker ``ModelSession`` (odal.daemon.worker.session): ``--warmup`` steps (tracing), a checkpoint, then
  ``--steps`` steps timed from that checkpoint, as a later round runs them.  Variants set the worker's throughput
  settings (env ``ODAL_TRAIN_*``, see odal.daemon.worker.throughput) one at a time; ``BENCH_*`` variables are
  measurements of this benchmark only (XLA on the loss alone, progress reports every N steps).
  A child that fails (e.g. a setting that does not compile) is a row of the table, and the run goes on.

    nice -n 10 .venv/bin/python bench/bench_throughput.py [--models tiny,ssdlite] [--repeats 1]

Writes bench/results/throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "daemon" / "assets"
CONFIGS = {"tiny": ASSETS / "ssd_mobilenet_v2_tiny.config", "ssdlite": ASSETS / "ssdlite_mobilenet_v2_finetune.config"}
# name -> environment of the worker; "plain" is the loop as it was (one step per call, no cache, TF's threads)
VARIANTS = {
    "plain": {"ODAL_TRAIN_STEPS_PER_CALL": "1", "ODAL_TRAIN_CACHE": "0"},
    "steps/call 10": {"ODAL_TRAIN_STEPS_PER_CALL": "10", "ODAL_TRAIN_CACHE": "0"},
    "cache": {"ODAL_TRAIN_STEPS_PER_CALL": "1", "ODAL_TRAIN_CACHE": "1"},
    "default": {},  # what the worker does now (the settings that paid)
    # on top of the default (each one setting more):
    "threads 1/1": {"ODAL_TRAIN_THREADS": "1,1"},
    "threads 1/2": {"ODAL_TRAIN_THREADS": "1,2"},
    "threads 2/2": {"ODAL_TRAIN_THREADS": "2,2"},
    "threads 2/1": {"ODAL_TRAIN_THREADS": "2,1"},
    "xla": {"ODAL_TRAIN_XLA": "1"},
    "xla loss": {"BENCH_XLA_LOSS": "1"},  # jit_compile on model.loss only (this benchmark only)
    # the ceiling of any loop change: the same step fed one batch held in memory (no reading, decoding,
    # augmentation or batching at all: what is left is the model's own forward/backward and the optimiser)
    "ceiling": {"BENCH_FIXED_BATCH": "1"},
    # NOT the same config (less work a step): the SSDLite backbone's high-resolution layers (stem, blocks 1-5)
    # frozen through train_config.freeze_variables, which odal honours and the stock TF2 loop ignores
    "frozen 1-5": {"BENCH_FREEZE": r"^(bn_)?Conv1/|^expanded_conv_|^block_[1-5]_"},
    # more steps a call: progress reports every N steps instead of 10 (BENCH_REPORT_EVERY, this benchmark only)
    "steps/call 25": {"ODAL_TRAIN_STEPS_PER_CALL": "25", "BENCH_REPORT_EVERY": "25"},
    "steps/call 50": {"ODAL_TRAIN_STEPS_PER_CALL": "50", "BENCH_REPORT_EVERY": "50"},
    "steps/call 100": {"ODAL_TRAIN_STEPS_PER_CALL": "100", "BENCH_REPORT_EVERY": "100"},
}


# -- children (each a fresh process) -------------------------------------------------------------------------------
def child_stock(pipeline: Path, model_dir: Path) -> dict:
    import logging

    from odal.daemon.worker import odapi_compat  # noqa: F401
    from object_detection import model_lib_v2

    lines: list[str] = []

    class Keep(logging.Handler):  # the loop's log lines, with the wall and CPU time they were written at
        def emit(self, record):
            lines.append((record.getMessage(), time.monotonic(), time.process_time()))

    logging.getLogger("tensorflow").addHandler(Keep())
    logging.getLogger("tensorflow").setLevel(logging.INFO)
    started = time.monotonic()
    model_lib_v2.train_loop(pipeline_config_path=str(pipeline), model_dir=str(model_dir), train_steps=200,
                            checkpoint_every_n=1000, record_summaries=True)  # model_main_tf2's defaults
    found = ((re.search(r"Step (\d+) per-step time ([\d.]+)s", line), cpu) for line, _, cpu in lines)
    per_step = {int(match[1]): (float(match[2]), cpu) for match, cpu in found if match}
    return {"steps_per_s": 1.0 / per_step[200][0], "first_100_s": per_step[100][0] * 100,
            "cpu_s_per_step": (per_step[200][1] - per_step[100][1]) / 100,
            "wall_s": time.monotonic() - started}


def child_odal(work: Path, model: str, warmup: int, steps: int) -> dict:
    from odal.daemon.rounds.contracts import FineTune
    from odal.daemon.worker import session as sessions, throughput

    if os.environ.get("BENCH_REPORT_EVERY"):
        throughput.REPORT_EVERY = int(os.environ["BENCH_REPORT_EVERY"])

    fine_tune = None
    if model == "ssdlite":
        text = (work / "pipeline.config").read_text()
        prefix = text.split('fine_tune_checkpoint: "', 1)[1].split('"', 1)[0]
        fine_tune = FineTune(prefix, "full")
    classes = (work / "label_map.pbtxt").read_text().count("item {")  # the same class count as the stock config
    configs = sessions.load_configs(CONFIGS[model], work / "label_map.pbtxt", classes, work / "train.record",
                                    work / "eval.record", fine_tune)
    if os.environ.get("BENCH_FREEZE"):
        configs["train_config"].freeze_variables.append(os.environ["BENCH_FREEZE"])
    sessions.adjustments(configs)
    session = sessions.ModelSession(configs)
    if os.environ.get("BENCH_FIXED_BATCH") == "1":  # one batch, taken once, repeated from memory
        plain_input = throughput.train_input
        throughput.train_input = lambda cache, **kwargs: plain_input(cache, **kwargs).take(1).cache().repeat()
    if os.environ.get("BENCH_XLA_LOSS") == "1":  # XLA on the loss only (target assignment, losses), not the convolutions
        import tensorflow as tf

        object.__setattr__(session.model, "loss", tf.function(session.model.loss, jit_compile=True))
    reports = []
    started = time.monotonic()
    session.train(configs, warmup, None, fine_tune, lambda *a: None)
    warm_s = time.monotonic() - started
    with tempfile.TemporaryDirectory() as ckpt:
        prefix = session.save(Path(ckpt))
        session.weights_from = prefix
        result = session.train(configs, steps, prefix, None, lambda done, total, loss: reports.append(done))
    return {"steps_per_s": steps / result["seconds"], "warmup_s": warm_s,
            "cpu_s_per_step": result["cpu_seconds"] / steps, "loss_first": result["losses"][0],
            "loss_last": result["losses"][-1], "progress_reports": len(reports)}


# -- parent --------------------------------------------------------------------------------------------------------
def prepare(root: Path, model: str, images: int) -> Path:
    """A folder with train/eval records, label map and the stock pipeline.config (with its fine-tune start)."""
    from worker_jobs import write_round
    from odal.daemon.sources import datasets

    labels = list(datasets.SHAPE_LABELS)
    items = datasets.generate_shapes(root / "data" / "images", images, seed=5, size=(640, 480))
    label_map = root / "data" / "label_map.pbtxt"
    datasets.write_label_map(label_map, labels)

    work = root / model
    write_round(work, items, labels, 0.1)
    script = (
        "import sys; from pathlib import Path; from odal.daemon.worker import odapi_compat\n"
        "from odal.daemon.worker.tfrecords import write_records; from odal.daemon.worker import session\n"
        "from odal.daemon.rounds.contracts import FineTune\n"
        "w = Path(sys.argv[1]); model = sys.argv[2]; config = Path(sys.argv[3])\n"
        "write_records(w / 'annotations.jsonl', w)\n"
        "ft = None\n"
        "if model == 'ssdlite':\n"
        "    from odal.daemon.commands.init import write_start\n"
        f"    ft = FineTune(str(write_start(w / 'start', {labels!r}, config)), 'full')\n"
        f"c = session.load_configs(config, Path({str(label_map)!r}), {len(labels)}, w / 'train.record', "
        "w / 'eval.record', ft)\n"
        "session.adjustments(c); session.write_pipeline(c, w / 'pipeline.config')\n")
    done = subprocess.run([sys.executable, "-c", script, str(work), model, str(CONFIGS[model])],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"preparing the {model} records and config failed: {done.stderr[-3000:]}")
    (work / "label_map.pbtxt").write_bytes(label_map.read_bytes())
    return work


def run_child(args: list[str], env: dict, log: Path) -> dict:
    out = log.with_suffix(".json")
    with open(log, "ab") as stderr:
        done = subprocess.run([sys.executable, __file__, "--child", *args, "--out", str(out)],
                              env={**os.environ, **env}, stdout=stderr, stderr=stderr)
    if done.returncode != 0:  # reported in the table (e.g. a setting that does not compile), the others still run
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["?"]
        print(f"{args[0]} child failed: {log.read_text()[-3000:]}", file=sys.stderr)
        return {"error": tail[0][:160]}
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny,ssdlite")
    parser.add_argument("--variants", default="plain,default,threads 1/1,xla")  # any of VARIANTS
    parser.add_argument("--ssdlite-variants", default="plain,default,threads 1/1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--result", default="throughput.md", help="file name under bench/results/")
    parser.add_argument("--child", choices=["stock", "odal"])
    parser.add_argument("--work")
    parser.add_argument("--model")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        work = Path(args.work)
        if args.child == "stock":
            with tempfile.TemporaryDirectory() as model_dir:
                result = child_stock(work / "pipeline.config", Path(model_dir))
        else:
            result = child_odal(work, args.model, args.warmup, args.steps)
        Path(args.out).write_text(json.dumps(result))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    results: dict[tuple[str, str], list[dict]] = {}
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in args.models.split(","):
            work = prepare(root, model, args.images)
            names = (args.variants if model == "tiny" else args.ssdlite_variants).split(",")
            for _ in range(args.repeats):
                for name in ["stock", *names]:
                    load.append(os.getloadavg()[0])
                    child = (["stock"] if name == "stock" else
                             ["odal", "--model", model, "--warmup", str(args.warmup), "--steps", str(args.steps)])
                    result = run_child([*child, "--work", str(work)], {} if name == "stock" else VARIANTS[name],
                                       root / f"{model}-{name.replace(' ', '_').replace('/', '_')}.log")
                    results.setdefault((model, name), []).append(result)
                    print(model, name, json.dumps(result), flush=True)
    lines = ["# Training throughput: odal worker vs stock model_main_tf2 (steady steps/s, same config/records/batch)",
             "", f"`.venv/bin/python bench/bench_throughput.py {' '.join(sys.argv[1:])}`: {args.images} generated 640x480 JPEGs, batch 8; odal: {args.warmup} "
             f"warm-up steps then {args.steps} timed; stock: steps 101-200 of its own log. {os.cpu_count()} cores "
             f"(1-min load average {min(load):.1f}-{max(load):.1f} during the run, this bench included).", "",
             "| model | loop | steps/s | x stock | CPU s/step | x stock (CPU) | trace/warm-up s | loss first -> last |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for (model, name), runs in results.items():
        failed = [r["error"] for r in runs if "error" in r]
        runs = [r for r in runs if "error" not in r]
        if not runs:
            lines.append(f"| {model} | {name} | failed: {failed[0].replace('|', '/')} | | | | | |")
            continue
        rate = sum(r["steps_per_s"] for r in runs) / len(runs)
        stock = results[(model, "stock")]
        stock_rate = sum(r["steps_per_s"] for r in stock) / len(stock)
        cpu = sum(r["cpu_s_per_step"] for r in runs) / len(runs)
        stock_cpu = sum(r["cpu_s_per_step"] for r in stock) / len(stock)
        warm = sum(r.get("warmup_s", r.get("first_100_s")) for r in runs) / len(runs)
        loss = "" if name == "stock" else f"{runs[-1]['loss_first']:.3f} -> {runs[-1]['loss_last']:.3f}"
        spread = ""  # each repeat's figure, when there are several (they are side by side, interleaved)
        if len(runs) > 1:
            spread = " (" + ", ".join(f"{r['steps_per_s']:.2f}" for r in runs) + ")"
        lines.append(f"| {model} | {name} | {rate:.2f}{spread} | {rate / stock_rate:.2f} | {cpu:.3f} "
                     f"| {stock_cpu / cpu:.2f} | {warm:.0f} | {loss} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "bench" / "results" / args.result).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
