"""The daemon's own limits at scale: the ledger and the active-learning queue at 1 000 000 annotations and images.

    nice -n 10 .venv/bin/python bench/bench_scale_store.py [--n 1000000] [--out bench/results/scale_store.md]

One SQLite file (the workspace's ledger.sqlite, in a temporary folder) is filled the way the daemon fills it:

* ledger ingest: ``Ledger.commit`` of ``--n`` accepted annotations (2 boxes each) in transactions of ``--batch``
  lines (what the export reader commits at a time), timed as a whole: the ledger's write rate, without the JSON
  parsing and image decoding before it (bench/results/ingest.md measures those per line);
* the queue: ``--n`` image rows (``ActiveQueue``'s own upsert, no files on disk), then half of them scored;
* then, each the best of ``--repeat``: the round snapshot (``Ledger.accepted()``, the stable train/eval split and
  the round's annotations.jsonl), the queue's top-16 (``next_images``, what the Prodigy recipe asks for) and its
  pending-16 (what the scorer reads next), ``odal status``'s counts (``Ledger.counts`` + ``ActiveQueue.status``),
  a round trigger's check (``accepted_changes_since``), and the file's size.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from odal.daemon.rounds.inputs import split_of, write_splits
from odal.daemon.sources.prodigy_format import Annotation, Box
from odal.daemon.store.ledger import Ledger
from odal.daemon.store.queue import ActiveQueue

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["raccoon", "cat"]


def annotations(start: int, stop: int, data_dir: Path):
    for n in range(start, stop):
        boxes = (Box("raccoon", 0.1, 0.1, 0.4, 0.5), Box("cat", 0.5, 0.2, 0.9, 0.8))
        ann = Annotation(str(n), str(n), 1_700_000_000.0, "accept", f"img{n:07d}.jpg", 640, 480, boxes, None, None)
        yield ann, str(data_dir / f"img{n:07d}.jpg"), 640, 480, "export.jsonl", n + 1


def best(repeat: int, call) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - started)
    return min(times), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale_store.md")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="odal-scale-") as tmp:
        work, data_dir = Path(tmp), Path(tmp) / "images"
        data_dir.mkdir()
        db = work / "ledger.sqlite"
        ledger = Ledger(db)
        started = time.perf_counter()
        for start in range(0, args.n, args.batch):
            ledger.commit("export.jsonl", {"offset": start}, annotations(start, min(args.n, start + args.batch),
                                                                         data_dir))
        seconds = time.perf_counter() - started
        rows.append((f"ledger ingest, {args.n:,} annotations in transactions of {args.batch:,}",
                     f"{seconds:.1f} s ({args.n / seconds:,.0f} annotations/s)"))

        queue = ActiveQueue(db, data_dir)
        started = time.perf_counter()
        now = time.time()
        for start in range(0, args.n, 10_000):
            with queue._write() as conn:  # noqa: SLF001 - the queue's own upsert, without files on disk
                conn.executemany(
                    "INSERT INTO active_queue (path, size, mtime_ns, added_at) VALUES (?,?,?,?)",
                    [(str(data_dir / f"new{n:07d}.jpg"), 50_000, n, now) for n in range(start,
                                                                                      min(args.n, start + 10_000))])
        seconds = time.perf_counter() - started
        rows.append((f"queue: {args.n:,} images added", f"{seconds:.1f} s"))
        with queue._write() as conn:  # noqa: SLF001 - half of them scored by version 1
            conn.execute("UPDATE active_queue SET uncertainty = (rowid % 997) / 997.0, scored_version = 1, "
                         "scored_at = ?, input_hash = 'q' || rowid WHERE rowid % 2 = 0", (now,))
        queue.rescore_all(2)

        seconds, accepted = best(args.repeat, ledger.accepted)
        rows.append(("round snapshot: `Ledger.accepted()`", f"{seconds:.2f} s ({len(accepted):,} rows)"))
        pairs = [(a, split_of(a["input_hash"], 0.2)) for a in accepted]
        seconds, _ = best(args.repeat, lambda: write_splits(work / "annotations.jsonl", pairs, LABELS))
        rows.append(("round snapshot: split + annotations.jsonl", f"{seconds:.2f} s "
                     f"({(work / 'annotations.jsonl').stat().st_size / 1e6:.0f} MB)"))
        del accepted, pairs
        seconds, top = best(args.repeat, lambda: queue.next_images(16))
        rows.append(("queue top-16 (`next_images`, the recipe's next batch)", f"{seconds * 1000:.0f} ms"))
        seconds, _ = best(args.repeat, lambda: queue.pending(16))
        rows.append(("queue pending-16 (`pending`, the scorer's next batch)", f"{seconds * 1000:.0f} ms"))
        seconds, _ = best(args.repeat, lambda: (ledger.counts(), queue.status()))
        rows.append(("`odal status` counts (`Ledger.counts` + `ActiveQueue.status`)", f"{seconds * 1000:.0f} ms"))
        seconds, _ = best(args.repeat, lambda: ledger.accepted_changes_since(args.n - 100))
        rows.append(("round trigger check (`accepted_changes_since`)", f"{seconds * 1000:.1f} ms"))
        queue.close()
        ledger.close()
        size = sum(p.stat().st_size for p in work.glob("ledger.sqlite*"))
        rows.append(("ledger.sqlite size (annotations + queue)", f"{size / 1e6:,.0f} MB"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("peak memory of this process (the round snapshot's rows dominate)", f"{peak:,.0f} MiB"))

    lines = [f"# Ledger and queue at {args.n:,} annotations and images", "",
             f"`nice -n 10 .venv/bin/python bench/bench_scale_store.py --n {args.n}` on {platform.machine()}, "
             f"{os.cpu_count()} cores (shared with other jobs), Python {sys.version.split()[0]}, "
             f"SQLite {__import__('sqlite3').sqlite_version}; times are the best of {args.repeat} where repeated.", "",
             "| what | measured |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
