"""Peak memory of the daemon and of ``odal serve`` through a hostile data dir (special files, bombs, big images).

    python bench/bench_hostile_rss.py [--out bench/results/hostile_rss.md]

A real ``odal serve`` (a one-box SavedModel) and the real daemon on a data dir holding 3 small good images, one
entry of every hostile kind of ``tests/hostile.py`` (a FIFO, a link to /dev/zero, a /dev/zero node, symlink loops,
links leading out, a 30000x30000 PNG bomb, a 90 MP PNG, a sparse 3 GiB file, truncated, random and empty files,
a folder named like an image) and two 45 MP images under the pixel limit (a PNG and a JPEG), none annotated.
Measures ``VmRSS``/``VmHWM`` of both processes before the daemon starts, when it is up, and once the queue has
scored every good image (the big ones are sent shrunk to 1024 pixels a side).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import DaemonProcess, make_workspace  # noqa: E402
from hostile import KINDS, make  # noqa: E402
from test_recipe import brightness_model, serve  # noqa: E402

from odal.daemon.store.queue_query import QueueQuery  # noqa: E402


def memory(pid: int) -> dict:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+)", text, re.M).group(1)) // 1024 for key in ("VmRSS", "VmHWM")}


def server_pid(port: str) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"odal.serving.server" in cmdline and f"--port={port}".encode() in cmdline:
                return int(proc.name)
    raise RuntimeError("odal serve not found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "hostile_rss.md"))
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="odal-hostile-") as tmp:
        root = Path(tmp)
        data = root / "data"
        (root / "outside").mkdir(parents=True)
        good = [make(data, f"good-{n}.jpg", "good", seed=n) for n in range(3)]
        for kind in KINDS:
            if kind != "good":
                make(data, f"{kind}.png", kind, outside=root / "outside")
        Image.new("RGB", (7800, 5800), (40, 90, 200)).save(data / "big-45mp.png")
        Image.new("RGB", (7800, 5800), (200, 90, 40)).save(data / "big-45mp.jpg", quality=85)
        expected = {p.name for p in good} | {"big-45mp.png", "big-45mp.jpg", "target-0.jpg"}
        rows = []
        with serve(root / "serve", {"odal": brightness_model(root / "bright")}) as address:
            spid = server_pid(address.rsplit(":", 1)[1])
            rows.append(("server up, model loaded", None, memory(spid)))
            from odal.daemon.sources import datasets

            items = datasets.generate_shapes(root / "shapes", 1, seed=1)
            config = make_workspace(root / "ws", items, min_new=1000, serving_address=address)
            config.write_text(config.read_text().replace(f'data_dir = "{items[0].image.parent}"',
                                                         f'data_dir = "{data}"'))
            with DaemonProcess(config) as daemon:
                rows.append(("daemon started (queue scanned)", memory(daemon.pid), memory(spid)))
                queue = QueueQuery.reader(config.parent / "work")
                started = time.monotonic()
                scored: set[str] = set()
                while time.monotonic() - started < 300 and not expected <= scored:
                    scored = {Path(r["path"]).name for r in queue.next_images(100) if r["uncertainty"] is not None}
                    time.sleep(0.5)
                queue.close()
                took = time.monotonic() - started
                rows.append((f"every good image scored ({len(scored)} in {took:.0f} s)", memory(daemon.pid),
                             memory(spid)))
                alive = daemon.alive()
    lines = [
        "# Peak memory through a hostile data dir",
        "",
        f"`python bench/bench_hostile_rss.py` on {platform.node()} ({platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}: {len(KINDS) - 1} hostile entries + 3 small good images + a 45 MP PNG and a "
        "45 MP JPEG, none annotated; the daemon stayed up: " + str(alive) + ".",
        "",
        "| moment | daemon RSS MiB | daemon peak MiB | odal serve RSS MiB | odal serve peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name, dmem, smem in rows:
        d = (str(dmem["VmRSS"]), str(dmem["VmHWM"])) if dmem else ("-", "-")
        lines.append(f"| {name} | {d[0]} | {d[1]} | {smem['VmRSS']} | {smem['VmHWM']} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
