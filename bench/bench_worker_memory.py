"""Worker memory over many rounds: the TensorFlow child's RSS after each round of one long-lived worker.

The daemon keeps one worker for as long as the model does not change, so anything a round leaves behind adds up
over weeks.  This runs ``--rounds`` real round jobs (records, train, evaluate, export) through one
``python -m odal.daemon.worker`` child, each round in its own folder with the previous folder deleted (as
retention does), and samples the child's VmRSS from ``/proc`` after each result.

    .venv/bin/python bench/bench_worker_memory.py [--rounds 30] [--steps 5] [--images 12]

Writes bench/results/worker_memory.md.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from worker_jobs import Worker, arguments, round_job, shapes, write_result, write_round

from odal.daemon.rounds.worker_client import rss_bytes


def main() -> int:
    args = arguments(30, 5, 12)
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items, labels, label_map = shapes(root, args.images)
        worker = Worker(root / "worker.log")
        for number in range(1, args.rounds + 1):
            round_dir = root / "rounds" / str(number)
            write_round(round_dir, items, labels, 0.25)
            message = worker.run(round_job(root, round_dir, number, args.steps, label_map, labels))
            samples.append((number, rss_bytes(worker.pid) / (1 << 20), message.export, message.timings))
            print(f"round {number:3d}: {samples[-1][1]:7.0f} MiB", flush=True)
            if number > 1:  # what retention does to old rounds
                for old in (root / "rounds" / str(number - 1), root / "odal_export" / str(number - 1),
                            root / "odal_ckpt" / str(number - 2)):
                    shutil.rmtree(old, ignore_errors=True)
        worker.stop()
    first, last = samples[0][1], samples[-1][1]
    settled = samples[min(4, len(samples) - 1)][1]
    per_round = (last - settled) / max(len(samples) - 1 - min(4, len(samples) - 1), 1)
    lines = [f"# Worker RSS over {args.rounds} rounds in one worker ({args.images} generated images, "
             f"{args.steps} steps, evaluate + export each round, tiny SSD MobileNetV2 128 px)", "",
             "| round | RSS MiB | export writes | train s | eval s | export s |", "|---:|---:|---|---:|---:|---:|"]
    for number, rss, how, timings in samples:
        lines.append(f"| {number} | {rss:.0f} | {how} | {timings['train']:.1f} | {timings.get('evaluate', 0):.1f} "
                     f"| {timings['export']:.1f} |")
    lines += ["", f"After round 1: {first:.0f} MiB; after round {len(samples)}: {last:.0f} MiB; "
              f"growth from round {min(5, len(samples))} on: {per_round:.1f} MiB a round."]
    write_result("worker_memory.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
