"""Ingest throughput: a ``db-out`` export read for the first time, then read again (a fresh ``prodigy db-out``
rewrites the whole file, and ``odal retry`` re-reads every source).

    python bench/bench_ingest.py [--voc ../shared/datasets/raccoon] [--copies 10] [--out bench/results/ingest.md]

The export holds one accepted record per image of the VOC folder (the raccoon set: real JPEGs of a few hundred
pixels), repeated ``--copies`` times under distinct input hashes so that the file is long.  Timed: the first read
(every line parsed and its image decoded once), a re-read of the unchanged file from its start (lines already in
the ledger keep their checked image), and a re-read after a fresh export in which every record has a newer answer
(every image decoded again).  Wall time of :func:`ingest_export_file` in this process, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from odal.daemon.sources import datasets
from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.store.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def records(items: list, copies: int, timestamp: int) -> list[str]:
    lines = []
    for copy in range(copies):
        for n, item in enumerate(items):
            record = datasets.prodigy_record(item, item.image.name, "accept", timestamp)
            record["_input_hash"] = record["_task_hash"] = copy * 100_000 + n + 1
            lines.append(json.dumps(record))
    return lines


def timed_read(export: Path, ledger: Ledger, labels: list[str], data_dir: Path, blobs: Path) -> tuple[float, dict]:
    ledger.forget_all_sources()
    started = time.perf_counter()
    stats = ingest_export_file(export, ledger, labels, data_dir, blobs)
    return time.perf_counter() - started, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voc", type=Path, default=ROOT.parent / "shared" / "datasets" / "raccoon")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.md")
    args = parser.parse_args()

    items = datasets.read_voc(args.voc)
    labels = sorted({box[0] for item in items for box in item.boxes})
    rows = []
    for name, timestamp_of_rewrite in (("first read", None), ("re-read, unchanged", 1000),
                                       ("re-read, every answer newer", "newer")):
        best, stats = None, None
        for attempt in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                export = tmp / "annotations.jsonl"
                export.write_text("\n".join(records(items, args.copies, 1000)) + "\n")
                ledger = Ledger(tmp / "ledger.sqlite")
                try:
                    seconds, stats = timed_read(export, ledger, labels, args.voc / "images", tmp / "blobs")
                    if timestamp_of_rewrite == "newer":
                        export.write_text("\n".join(records(items, args.copies, 2000 + attempt)) + "\n")
                    if timestamp_of_rewrite is not None:
                        seconds, stats = timed_read(export, ledger, labels, args.voc / "images", tmp / "blobs")
                finally:
                    ledger.close()
            best = seconds if best is None else min(best, seconds)
        rows.append((name, stats["lines"], best, stats))
        print(f"{name:<30} {stats['lines']} lines {best:.2f} s  {stats['lines'] / best:,.0f} lines/s  "
              f"inserted {stats['inserted']} updated {stats['updated']} unchanged {stats['unchanged']}")

    lines = [
        "# Ingest throughput (`bench/bench_ingest.py`)", "",
        f"{len(items)} raccoon JPEGs x {args.copies} copies (distinct input hashes); best of {args.repeat}; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}.", "",
        "| read | lines | seconds | lines/s | inserted | updated | unchanged |", "|---|---|---|---|---|---|---|",
    ]
    for name, count, seconds, stats in rows:
        lines.append(f"| {name} | {count} | {seconds:.2f} | {count / seconds:,.0f} | {stats['inserted']} | "
                     f"{stats['updated']} | {stats['unchanged']} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
