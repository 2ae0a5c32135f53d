"""The per-stage round table of ``odal demo`` workspaces, side by side (issue 14, goal 1: warm-round overhead).

Reads each workspace's ledger (``work/ledger.sqlite``: every round's stage timings, as the daemon recorded them) and
prints one Markdown row per round and workspace: records, train, evaluation, served evaluation, export, publish,
confirmation, the rest (total minus the stages: the checkpoint save, the worker's answer, the ledger), total and
overhead (total minus train); then the mean warm-round (2+) overhead of each workspace and its ratio to the first.

    nice -n 10 .venv/bin/odal demo --workspace /tmp/old --rounds 3 &   # e.g. main's tree
    nice -n 10 .venv/bin/odal demo --workspace /tmp/new --rounds 3     # this tree, at the same time
    .venv/bin/python bench/demo_rounds.py old=/tmp/old new=/tmp/new
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys

STAGES = ("records", "train", "evaluate", "evaluate_served", "export", "publish", "confirm")


def rounds(workspace: str) -> list[dict]:
    with sqlite3.connect(f"file:{workspace}/work/ledger.sqlite?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, timings FROM rounds WHERE state = 'published' ORDER BY id").fetchall()
    return [dict(json.loads(timings), round=number) for number, timings in rows if timings]


def main(args: list[str]) -> int:
    sides = [arg.split("=", 1) for arg in args]
    lines = ["| round | tree | " + " | ".join(STAGES) + " | rest | total | overhead |",
             "|---|---|" + "---:|" * (len(STAGES) + 3)]
    table = {name: rounds(path) for name, path in sides}
    overheads = {}
    for index in range(max(len(rows) for rows in table.values())):
        for name, rows in table.items():
            if index >= len(rows):
                continue
            t = rows[index]
            rest = t["total"] - sum(t.get(stage, 0.0) for stage in STAGES)
            overhead = t["total"] - t["train"]
            if index > 0:
                overheads.setdefault(name, []).append(overhead)
            lines.append(f"| {t['round']} | {name} | " + " | ".join(f"{t.get(stage, 0.0):.2f}" for stage in STAGES)
                         + f" | {rest:.2f} | {t['total']:.1f} | {overhead:.2f} |")
    means = {name: statistics.mean(values) for name, values in overheads.items()}
    first = next(iter(means.values()), None)
    lines += [""] + [f"- {name}: warm-round overhead (rounds 2+, mean) {mean:.2f} s"
                     + (f", {mean / first:.2f}x the first" if first else "") for name, mean in means.items()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
