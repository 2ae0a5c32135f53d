"""Idle cost of the daemon: RSS and CPU of the daemon parent over a quiet minute (no round, no new annotations).

    python bench/bench_idle.py [--seconds 60] [--out bench/results/idle.md]

Starts the real daemon (``python -m odal.daemon``) on a fresh workspace of generated shapes with 20 ingested
annotations and ``min_new_annotations`` too high for a round, waits until it is idle, then samples
``/proc/<pid>/stat`` (utime + stime) and ``/proc/<pid>/status`` (VmRSS, VmHWM, Threads) once a second.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import DaemonProcess, append_records, make_workspace  # noqa: E402
from odal.daemon.sources import datasets  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def status(pid: int) -> dict:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+)", text, re.M).group(1)) for key in ("VmRSS", "VmHWM", "Threads")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "idle.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = datasets.generate_shapes(root / "images", 20, seed=1)
        config = make_workspace(root / "ws", items, min_new=1000)
        append_records(config.parent / "exports" / "annotations.jsonl",
                       [datasets.prodigy_record(i, i.image.name) for i in items])
        daemon = DaemonProcess(config).start()
        try:
            assert daemon.wait_event("ingested", 60), "the daemon did not ingest"
            time.sleep(5)  # settle
            pid = daemon.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            samples = []
            while time.monotonic() - t0 < args.seconds:
                time.sleep(1)
                samples.append(status(pid))
            cpu = cpu_seconds(pid) - cpu0
            elapsed = time.monotonic() - t0
            children = [p for p in os.listdir("/proc") if p.isdigit() and Path(f"/proc/{p}/stat").exists()
                        and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid)]
            assert daemon.terminate() == 0
        finally:
            daemon.stop()
    rss = [s["VmRSS"] for s in samples]
    lines = [
        "# Idle daemon: RSS and CPU over a quiet minute",
        "",
        f"`python bench/bench_idle.py --seconds {args.seconds}` on {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "",
        "The daemon parent only (no round ran, so there is no worker child; "
        f"children during the window: {len(children)}). 20 annotations ingested, watchers on the export and data "
        "folders, the loop ticking every 0.25 s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| window | {elapsed:.1f} s |",
        f"| CPU (utime+stime) | {cpu:.3f} s = {100 * cpu / elapsed:.2f} % of one core |",
        f"| RSS min / median / max | {min(rss) / 1024:.1f} / {sorted(rss)[len(rss) // 2] / 1024:.1f} / "
        f"{max(rss) / 1024:.1f} MiB |",
        f"| RSS growth over the window | {(rss[-1] - rss[0])} KiB |",
        f"| peak RSS (VmHWM) | {samples[-1]['VmHWM'] / 1024:.1f} MiB |",
        f"| threads | {samples[-1]['Threads']} |",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
