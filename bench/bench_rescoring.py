"""Incremental re-scoring of the active-learning queue: how long until 10 000 images are scored by a new version,
and how long each scoring step holds the daemon's loop.  Also the cost of the ``image_embedding`` output.

    nice -n 10 .venv/bin/python bench/bench_rescoring.py [--images 10000] [--size 640x480] [--limit 8]
        [--max-seconds S] [--max-minutes M] [--mode before|after|both] [--side 300] [--compare-stock]
        [--saved-model EXPORT] [--workdir DIR]

Synthetic JPEGs (coloured boxes and discs on a noisy background) in a data dir; ``odal serve`` (a real subprocess)
serves odal's pretrained SSDLite export (``python -m odal.daemon.worker.pretrained --export``, with the embedding;
made here when ``--saved-model`` is not given).  The queue is the daemon's own :class:`ActiveQueue` in a fresh
ledger file for each mode, every image pending.  ``before``: the loop as the daemon ran it until the Rescorer: wait
one tick for events (0.25 s, none come), then ``score_pending(limit, max_seconds)`` in the loop thread (images up
to 1024 a side, chunks of 8), until nothing is pending.  ``after``: the daemon today, the :class:`Rescorer` thread
scoring (images sent at ``--side``, default the model's pipeline.config) while the loop ticks.  ``both``: one then
the other, same server, same images.  Reported: the time to score everything, images/s, and how long each loop
turn was held beyond its tick (the most an event waits), the time of the recipe's ``next_images`` in the
``diverse`` order over the whole queue.
With ``--compare-stock`` or ``--stock-saved-model`` (the same model exported by the OD API's stock module: without
the extra output) the per-predict latency of both is compared on the same server.  Appends to
bench/results/rescoring.md.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from odal.daemon.handlers import scoring
from odal.daemon.handlers.rescorer import Rescorer
from odal.daemon.store.queue import ActiveQueue
from odal.serving.client import ServingClient
from odal.serving.process import ServerProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "rescoring.md"
TICK = 0.25  # daemon/main.py _TICK


def make_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> float:
    """``count`` JPEGs of ``size``: a few coloured rectangles and ellipses on noise; returns the seconds taken."""
    from PIL import Image, ImageDraw

    started = time.monotonic()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for index in range(count):
        base = rng.integers(0, 255, 3)
        noise = rng.integers(-30, 30, (height // 8, width // 8, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        sub = folder / f"{index // 1000:02d}"
        sub.mkdir(exist_ok=True)
        image.save(sub / f"img-{index:05d}.jpg", quality=85)
    return time.monotonic() - started


def export_pretrained(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "odal.daemon.worker.pretrained", "--export", str(out)], check=True,
                   capture_output=True)
    return out


def export_stock(out: Path) -> Path:
    """The same pretrained model exported by the OD API's stock ``DetectionFromImageModule`` (no embedding)."""
    code = ("import sys; from pathlib import Path; from odal.daemon.worker import odapi_compat, embedding, pretrained\n"
            "from object_detection import exporter_lib_v2\n"
            "embedding.DetectionWithEmbeddingModule = exporter_lib_v2.DetectionFromImageModule\n"
            "pretrained.export(Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True)
    return out


def serve(workdir: Path, models: dict[str, Path]) -> tuple[ServerProcess, str]:
    config = ""
    for name, saved in models.items():
        base = workdir / "models" / name
        base.mkdir(parents=True)
        os.symlink(saved.resolve(), base / "1")
        config += f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }}\n'
    (workdir / "models.config").write_text("model_config_list {\n" + config + "}\n")
    server = ServerProcess(workdir / "serve.log", f"--model_config_file={workdir / 'models.config'}")
    with ServingClient(server.address, timeout=120) as client:
        for name in models:
            client.wait_until_available(name, timeout=600)
    return server, server.address


def rescore(queue: ActiveQueue, client: ServingClient, version: int, limit: int, max_seconds: float | None,
            max_minutes: float | None = None) -> dict:
    """The daemon's loop after a new version: tick, score a bounded batch, until nothing is pending (or until
    ``max_minutes``: then the rate so far is reported, and the time for all of them extrapolated from it)."""
    queue.rescore_all(version)
    steps = []
    started = time.monotonic()
    while True:
        time.sleep(TICK)  # events.get(timeout=_TICK) with no event
        step = time.monotonic()
        scored = scoring.score_pending(queue, client, "odal", limit=limit, max_seconds=max_seconds)
        steps.append(time.monotonic() - step)
        if scored == 0 or (max_minutes and time.monotonic() - started > max_minutes * 60):
            break
    total = time.monotonic() - started
    status = queue.status()
    return {"seconds": total, "steps": steps, "status": status}


def rescore_background(queue: ActiveQueue, client: ServingClient, version: int, side: int | None,
                       max_minutes: float | None = None) -> dict:
    """The daemon's loop today: the :class:`Rescorer` thread scores (images sent at ``side``); the loop waits one
    tick for events, then its scoring step only sets ``allowed``.  ``steps`` are how much later than the tick the
    loop got to run, plus its step: the longest an event waits beyond the tick."""
    queue.rescore_all(version)
    rescorer = Rescorer(queue, client, "odal", model_side=side).start()
    steps = []
    started = last_check = time.monotonic()
    try:
        while True:
            asleep = time.monotonic()
            time.sleep(TICK)  # events.get(timeout=_TICK) with no event
            rescorer.allowed = True  # the loop's whole scoring step
            rescorer.take_disk_error()
            steps.append(time.monotonic() - asleep - TICK)
            if time.monotonic() - last_check > 1.0:  # the bench's own look, not the daemon's loop
                last_check = time.monotonic()
                if not queue.status()["pending"] or (max_minutes and last_check - started > max_minutes * 60):
                    break
    finally:
        rescorer.stop()
    return {"seconds": time.monotonic() - started, "steps": steps, "status": queue.status()}


def predict_latency(client: ServingClient, model: str, images: list[Path], repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        for path in images:
            started = time.monotonic()
            client.predict(model, path)
            times.append(time.monotonic() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--limit", type=int, default=8, help="images per loop step at most")
    parser.add_argument("--max-seconds", type=float, help="no new predict batch in a step after this long")
    parser.add_argument("--max-minutes", type=float, help="stop the pass after this long (rate extrapolated)")
    parser.add_argument("--saved-model", type=Path, help="odal export with the embedding (default: made here)")
    parser.add_argument("--stock-saved-model", type=Path, help="the same model without the extra output")
    parser.add_argument("--compare-stock", action="store_true", help="export that stock model here")
    parser.add_argument("--mode", choices=("before", "after", "both"), default="both",
                        help="before: scoring in the loop (the old way); after: the Rescorer thread; both in turn")
    parser.add_argument("--side", type=int, default=_model_side(),
                        help="the model's input side for the Rescorer (default: from its pipeline.config)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="odal-bench-rescoring-"))
    data = workdir / "data"
    made = 0.0 if data.is_dir() else make_images(data, args.images, size)
    saved = args.saved_model or (workdir / "export" if (workdir / "export").is_dir()
                                 else export_pretrained(workdir / "export"))
    if args.compare_stock and not args.stock_saved_model:
        args.stock_saved_model = (workdir / "stock" if (workdir / "stock").is_dir()
                                  else export_stock(workdir / "stock"))
    models = {"odal": saved, **({"stock": args.stock_saved_model} if args.stock_saved_model else {})}
    shutil.rmtree(workdir / "models", ignore_errors=True)
    server, address = serve(workdir, models)
    lines = []
    try:
        results = {}
        for mode in ("before", "after") if args.mode == "both" else (args.mode,):
            ledger = workdir / f"ledger-{mode}.sqlite"  # a fresh queue for each: every image pending
            for stale in workdir.glob(f"ledger-{mode}.sqlite*"):
                stale.unlink()
            with ActiveQueue(ledger, data) as queue, ServingClient(address, timeout=60) as client:
                scan_started = time.monotonic()
                scanned = queue.scan()
                scan_seconds = time.monotonic() - scan_started
                client.predict("odal", sorted(data.rglob("*.jpg"))[0])  # the server's first inference: not a step's
                results[mode] = (rescore(queue, client, 1, args.limit, args.max_seconds, args.max_minutes)
                                 if mode == "before" else
                                 rescore_background(queue, client, 1, args.side, args.max_minutes))
        with ActiveQueue(ledger, data) as queue, ServingClient(address, timeout=60) as client:
            order_started = time.monotonic()
            ranked = queue.next_images(10**9, strategy="diverse")
            order_seconds = time.monotonic() - order_started
            sample = sorted(data.rglob("*.jpg"))[:20]
            with_embedding = predict_latency(client, "odal", sample)
            stock = predict_latency(client, "stock", sample) if args.stock_saved_model else []
            with_embedding_2 = predict_latency(client, "odal", sample) if stock else []
        n = scanned["images"]
        bound = (f" --max-seconds {args.max_seconds:g}" if args.max_seconds else "") + (
            f" --max-minutes {args.max_minutes:g}" if args.max_minutes else "") + (
            " --compare-stock" if stock else "") + f" --mode {args.mode}" + (
            f" --side {args.side}" if args.side else "")
        lines += [
            "# Re-scoring the active-learning queue after a new version",
            "",
            f"`nice -n 10 .venv/bin/python bench/bench_rescoring.py --images {args.images} --size {args.size} "
            f"--limit {args.limit}{bound}` on {platform.node()} ({os.cpu_count()} cores, shared with other jobs), "
            f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}; model: odal's pretrained "
            f"SSDLite export (embedding D = {_dim(address)}).",
            "",
            f"- {n} synthetic {args.size} JPEGs ({_mib(data):.0f} MiB; made in {made:.0f} s); "
            f"`scan()` {scan_seconds:.1f} s",
        ]
        for mode, result in results.items():
            lines += _summary(mode, result, n, args)
        lines += [
            f"- `next_images(all, strategy=\"diverse\")` over the {len(ranked)} rows: {order_seconds * 1000:.0f} ms",
            f"- predict latency over gRPC (20 images x 3, one at a time), with the embedding output: p50 "
            f"{statistics.median(with_embedding) * 1000:.1f} ms",
        ]
        if stock:
            lines.append(f"- the same model exported by the OD API's stock module (no extra output), same server, "
                         f"interleaved: p50 {statistics.median(stock) * 1000:.1f} ms (odal export again: "
                         f"{statistics.median(with_embedding_2) * 1000:.1f} ms)")
    finally:
        server.stop()
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as out:
        out.write(text + "\n")


def _summary(mode: str, result: dict, n: int, args) -> list[str]:
    left = result["status"]["pending"]
    rate = (n - left) / result["seconds"]
    steps = sorted(result["steps"][:-1] if not left and mode == "before" else result["steps"]) or [0.0]
    how = (f"in the loop, `score_pending(limit={args.limit}, max_seconds={args.max_seconds})`, images up to 1024 "
           f"a side, decoded in the loop thread" if mode == "before" else
           f"the `Rescorer` thread (chunks of 32, 4 predicts in flight, 2 decoding threads), images sent at the "
           f"model's side {args.side}; the loop only sets `allowed`")
    return [
        f"- **{mode}** ({how}): " + (f"all {n} scored in **{result['seconds'] / 60:.1f} min** ({rate:.1f} images/s)"
                                     if not left else
                                     f"stopped after {result['seconds'] / 60:.1f} min (`--max-minutes`) with "
                                     f"{n - left} of {n} scored: {rate:.1f} images/s, **all {n} in about "
                                     f"{n / rate / 60:.1f} min** at that rate (extrapolated)"),
        f"  - the loop is held (an event waits beyond the {TICK * 1000:.0f} ms tick) p50 "
        f"{statistics.median(steps) * 1000:.0f} ms, p95 {steps[int(0.95 * (len(steps) - 1))] * 1000:.0f} ms, max "
        f"{steps[-1] * 1000:.0f} ms over {len(steps)} loop turns",
    ]


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / (1 << 20)


def _model_side() -> int | None:
    from odal.daemon.rounds import pipeline_check
    from odal.daemon.worker.pretrained import CONFIG

    return pipeline_check.input_side(pipeline_check.read(CONFIG))


def _dim(address: str) -> int | str:
    with ServingClient(address) as client:
        outputs = client.signature("odal").outputs
    return outputs["image_embedding"][1][-1] if "image_embedding" in outputs else "none"


if __name__ == "__main__":
    main()
