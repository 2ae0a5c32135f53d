"""Predict latency and throughput: ``odal serve`` over gRPC and over REST versus an in-process call.

    python bench/bench_serving.py --saved-model PATH/TO/EXPORT/VERSION [--requests 60] [--rest-requests 12]

One 640x480 RGB image; concurrency 1, 4 and 16 (threads sharing one gRPC channel, or one keep-alive HTTP
connection each); bounded loops after a warm-up; loopback only.  The in-process baseline is the same SavedModel
loaded here with ``tf.saved_model.load`` and called the way the server calls it (all outputs to numpy).  Prints
a markdown table and writes it to bench/results/serving.md.  Not a test.

    python bench/bench_serving.py --rest-load [--clients 32] [--per-client 200] [--compare-commit 0b708e0]

Hostile-client mode (bench/results/serving_hostile.md): a small real SavedModel (input uint8 [1,-1,-1,3], a
4x5 image), ``--clients`` threads each sending ``--per-client`` REST predicts, each on a new connection (what
overflows a short listen backlog), then a 40-byte gRPC request declaring a [1,10000,10000,3] uint8 tensor, a
6 MB malformed REST body and a 10^15 Content-Length; reports connection errors, latency, and the server's peak
RSS.  With ``--compare-commit`` that commit's ``serving/`` (extracted with ``git archive``) serves too, and the
load alternates between the two servers in 4 slices, so before and after see the same machine load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from odal.serving.process import ServerProcess

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving.md"
CONCURRENCY = (1, 4, 16)


def _image(seed: int = 0) -> np.ndarray:
    """A 640x480 test picture: smooth gradients with a few solid shapes (compresses and detects like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], axis=-1).astype(np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
        image[y0:y0 + rng.integers(30, 80), x0:x0 + rng.integers(30, 80)] = rng.integers(0, 255, 3)
    return image


def _measure(call, concurrency: int, requests: int, warmup: int) -> dict:
    """Run ``call`` ``requests`` times from ``concurrency`` threads; latency percentiles and throughput."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            started = time.perf_counter()
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - reported, not hidden
                errors.append(exc)
                return
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"latencies": latencies, "wall": wall}


def write_report(path, lines: list[str]) -> int:
    """Print a bench's Markdown lines and write them to ``path`` atomically; the exit status 0."""
    from odal.daemon.system.atomic import atomic_write_text
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(path, text)
    return 0


def _summary(runs: list[dict]) -> dict:
    latencies = sorted(x for run in runs for x in run["latencies"])
    wall = sum(run["wall"] for run in runs)
    return {"p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))] * 1000,
            "rps": len(latencies) / wall, "n": len(latencies)}


def model_base(workdir: Path, name: str, saved_model: Path) -> Path:
    """A model base path ``workdir/models/name`` whose version 1 is ``saved_model`` (a link)."""
    base = workdir / "models" / name
    base.mkdir(parents=True)
    os.symlink(saved_model.resolve(), base / "1")
    return base


def start_server(label: str, base: Path, workdir: Path, model: str, *flags: str, pythonpath: str | None = None,
                 wait: float = 0.0) -> ServerProcess:
    """``odal serve`` of ``base`` as ``model`` (an older checkout's code with ``pythonpath``); waits until the
    model is available when ``wait`` (seconds) is given."""
    env = dict(os.environ)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        server = ServerProcess(workdir / f"serve-{label}.log", f"--model_name={model}", f"--model_base_path={base}",
                               *flags)
    finally:
        os.environ.clear()
        os.environ.update(env)
    if wait:
        from odal.serving.client import ServingClient

        with ServingClient(server.address, timeout=120) as client:
            client.wait_until_available(model, timeout=wait)
    return server


def rest_caller(port: int, model: str, body: bytes, timeout: float = 300):
    """A call POSTing ``body`` to REST predict on a kept-alive connection per thread; raises unless 200."""
    local = threading.local()

    def call() -> None:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        local.conn.request("POST", f"/v1/models/{model}:predict", body, {"Content-Type": "application/json"})
        answer = local.conn.getresponse()
        payload = answer.read()
        if answer.status != 200:
            raise RuntimeError(payload[:200])
        json.loads(payload)
    return call


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rest-load", action="store_true", help="the hostile-client mode (see the docstring)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=200)
    parser.add_argument("--compare-commit", default="", help="also run the server of this commit, first")
    parser.add_argument("--saved-model", type=Path, help="an exported OD API SavedModel folder")
    parser.add_argument("--requests", type=int, default=60, help="measured requests per gRPC/in-process row")
    parser.add_argument("--rest-requests", type=int, default=8, help="measured requests per REST row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rest_load:
        from bench_serving_load import run_hostile
        return run_hostile(args.clients, args.per_client, args.compare_commit, HERE / "results" / "serving_hostile.md")
    if args.saved_model is None:
        parser.error("--saved-model is required")

    image = _image()
    batch = image[np.newaxis]
    rows: list[tuple[str, int, dict]] = []

    import tensorflow as tf
    model = tf.saved_model.load(str(args.saved_model))
    function = model.signatures["serving_default"]

    def in_process() -> None:
        outputs = function(input_tensor=tf.constant(batch))
        {key: value.numpy() for key, value in outputs.items()}

    workdir = Path(tempfile.mkdtemp(prefix="odal-bench-"))
    server = start_server("bench", model_base(workdir, "bench", args.saved_model), workdir, "bench")
    try:
        from odal.serving.client import ServingClient
        client = ServingClient(server.address, timeout=120)
        client.wait_until_available("bench", timeout=300)

        def grpc_call() -> None:
            client.predict_tensors("bench", {"input_tensor": batch})

        # In-process and gRPC alternate in short rounds, so that both see the same background load.
        rounds = 3
        for concurrency in CONCURRENCY:
            local_runs, grpc_runs = [], []
            for _ in range(rounds):
                local_runs.append(_measure(in_process, concurrency, args.requests // rounds, args.warmup))
                grpc_runs.append(_measure(grpc_call, concurrency, args.requests // rounds, args.warmup))
            rows.append(("in-process tf.saved_model.load", concurrency, _summary(local_runs)))
            rows.append(("odal serve, gRPC", concurrency, _summary(grpc_runs)))
            print(rows[-2], rows[-1], flush=True)

        rest_call = rest_caller(server.rest_port, "bench", json.dumps({"instances": batch.tolist()}).encode(), 120)

        for concurrency in CONCURRENCY:
            rows.append(("odal serve, REST (JSON pixels)", concurrency,
                         _summary([_measure(rest_call, concurrency, args.rest_requests, min(args.warmup, 1))])))
            print(rows[-1], flush=True)
        client.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    baseline = {c: r["p50"] for name, c, r in rows if name.startswith("in-process")}
    lines = [
        "# Serving benchmark: predict on one 640x480 image",
        "",
        f"Model: `{args.saved_model.name}` of an OD API SSD export (input uint8 [1,H,W,3]); all outputs returned. "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, TF {tf.__version__}. "
        f"Loopback; server and client on the same machine (so the server's and the client's work share the CPUs). "
        f"{args.requests} requests per gRPC/in-process row, measured in 3 alternating rounds of each so both see "
        f"the same background load; {args.rest_requests} per REST row. The REST body is the image as JSON "
        f"numbers (4.8 MB); its cost is JSON parsing and encoding, the way TF Serving's REST API is specified.",
        "",
        "| path | concurrency | p50 ms | p99 ms | throughput req/s | p50 / in-process p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, concurrency, r in rows:
        ratio = r["p50"] / baseline[concurrency]
        lines.append(f"| {name} | {concurrency} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} | {ratio:.2f}x |")
    grpc1 = next(r for name, c, r in rows if name == "odal serve, gRPC" and c == 1)
    verdict = grpc1["p50"] / baseline[1]
    lines += ["", f"Goal: gRPC p50 overhead at concurrency 1 <= 1.2x the in-process call: "
                  f"**{verdict:.2f}x ({'met' if verdict <= 1.2 else 'not met'})**.", ""]
    table = "\n".join(lines)
    print(table)
    from odal.daemon.system.atomic import atomic_write_text
    atomic_write_text(args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
