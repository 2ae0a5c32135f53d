"""Train throughput under tf.distribute: steps/s and round time on 1 device and on 2 logical CPU devices (mirrored).

    nice -n 10 .venv/bin/python bench/bench_scale_train.py [--rounds 2] [--steps 60] [--images 32]

Each strategy gets its own real worker child (the daemon's client) running ``--rounds`` rounds of the tiny SSD on
the same generated shapes, the same global batch (8: one replica of 8, or 2 replicas of 4).  Reported per strategy:
steps/s of the last round's steps after its first (the train loop itself; the first step of a child traces the
step function), the first round's first step (tracing), and each round's wall time (records, train, evaluate,
export).  Two logical CPU devices share the same cores: this measures the overhead of the strategy (per-replica
step, gradient all-reduce), not a speed-up, which needs real devices.  Writes bench/results/scale_train.md.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

from worker_jobs import Worker, arguments, round_job, shapes, write_result, write_round

from odal.daemon.rounds.contracts import Distribute

STRATEGIES = {"default (1 device)": None, "mirrored, 2 logical CPU devices": Distribute("mirrored", cpu_devices=2)}


def run(root: Path, distribute, rounds: int, steps: int, images: int) -> list[dict]:
    items, labels, label_map = shapes(root, images)
    worker = Worker(root / "worker.log")
    out = []
    try:
        for number in range(1, rounds + 1):
            round_dir = root / "rounds" / str(number)
            write_round(round_dir, items, labels, 0.2)
            job = dataclasses.replace(round_job(root, round_dir, number, steps, label_map, labels),
                                      distribute=distribute)
            started = time.monotonic()
            result = worker.run(job)
            train = result.train
            out.append({"wall": time.monotonic() - started, "train": train, "timings": result.timings,
                        "steps_per_second": (steps - 1) / (train["seconds"] - train["first_step_seconds"])})
    finally:
        worker.stop()
    return out


def main() -> None:
    args = arguments(rounds=2, steps=60, images=32)
    lines = ["# Train throughput under tf.distribute", "",
             f"`nice -n 10 .venv/bin/python bench/bench_scale_train.py --rounds {args.rounds} --steps {args.steps} "
             f"--images {args.images}` on {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
             f"(load average {os.getloadavg()[0]:.1f} at the end); tiny SSD, global batch 8.", "",
             "| strategy | replicas | steps/s (last round, after its first step) | first step of the child | "
             "round wall times (s) | last round: train / evaluate / export (s) | last loss |",
             "|---|---|---|---|---|---|---|"]
    for name, distribute in STRATEGIES.items():
        with tempfile.TemporaryDirectory(prefix="odal-scale-train-") as tmp:
            results = run(Path(tmp), distribute, args.rounds, args.steps, args.images)
        last = results[-1]
        t = last["timings"]
        walls = ", ".join(f"{r['wall']:.0f}" for r in results)
        lines.append(f"| {name} | {last['train'].get('replicas', 1)} | {last['steps_per_second']:.2f} | "
                     f"{results[0]['train']['first_step_seconds']:.1f} s | "
                     f"{walls} | "
                     f"{t['train']:.0f} / {t.get('evaluate', 0):.0f} / {t.get('export', 0):.0f} | "
                     f"{last['train']['loss']:.2f} |")
    write_result("scale_train.md", lines)


if __name__ == "__main__":
    main()
