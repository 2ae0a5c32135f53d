"""Issue 14 goal 6: ``odal serve`` at 16 concurrent gRPC clients against the in-process call at 16 threads, for
each server setting side by side (gRPC worker threads, TensorFlow threads, server-side batching).

    nice -n 10 python bench/bench_serving_batching.py --saved-model EXPORT [--batched-model EXPORT_NONE_BATCH]

``--saved-model``: the in-process baseline and the non-batching rows; ``--batched-model`` the same model (same checkpoint) exported with
``input_tensor`` [None,H,W,3] (``bench/export_batched.py`` writes both from one checkpoint), for the batching rows;
without it the rows batch ``--saved-model`` itself, which only works if its batch dimension is free. Every setting
is its own ``odal serve`` process, all started first; then, in ``--rounds`` rounds, each row measures ``--requests``
predicts of one 640x480 image from 16 threads, rows in a new shuffled order each round, so all see the same machine
load; a first round (not counted) warms every row up. Fairness: the 16 gRPC client threads run in this process, on
the same 2 cores as the server; the in-process rows run in a child process of their own (``tf.saved_model.load``, 16
threads, all outputs to numpy, as the server calls it), for each export. Writes bench/results/serving_batching.md.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from bench_serving import _image, _measure, _summary, model_base, write_report, start_server

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving_batching.md"
CLIENTS = 16
BASELINE = "in-process, 16 threads"


def _batching_file(folder: Path, size: int, timeout_us: int, threads: int, enqueued: int = 64) -> str:
    path = folder / f"batching-{size}-{timeout_us}-{threads}.txt"
    path.write_text(f"max_batch_size {{ value: {size} }}\nbatch_timeout_micros {{ value: {timeout_us} }}\n"
                    f"num_batch_threads {{ value: {threads} }}\nmax_enqueued_batches {{ value: {enqueued} }}\n")
    return f"--batching_parameters_file={path}"


def settings(workdir: Path) -> list[tuple[str, str, list[str]]]:
    """(row name, model: plain|batched, flags) of every server measured."""
    rows = [("stock export, --enable_batching=false (before: the default)", "plain", ["--enable_batching=false"]),
            ("stock export, --grpc_max_threads=4", "plain", ["--grpc_max_threads=4"]),
            ("stock export, --grpc_max_threads=32", "plain", ["--grpc_max_threads=32"]),
            ("stock export, intra-op 1", "plain", ["--tensorflow_intra_op_parallelism=1"]),  # 0.55-0.84x: bad
            ("stock export, intra-op 2, inter-op 2", "plain", ["--tensorflow_intra_op_parallelism=2",
                                                                "--tensorflow_inter_op_parallelism=2"]),
            ("[None,H,W,3] export, --enable_batching=false", "batched", ["--enable_batching=false"])]
    for size, timeout_us, threads in ((4, 0, 1), (16, 0, 1), (8, 0, 2), (8, 2000, 1)):
        rows.append((f"[None,H,W,3] export, batching max {size}, timeout {timeout_us} us, {threads} thread(s)",
                     "batched", ["--enable_batching", _batching_file(workdir, size, timeout_us, threads)]))
    rows.append(("[None,H,W,3] export, default flags (batching on: max 8, timeout 0 us, 1 thread, as "
                 "serving/batching_parameters.txt)", "batched", []))
    return rows


def _child(args) -> int:
    """In-process rows: load the model, then for each line N on stdin run N predicts from 16 threads."""
    import tensorflow as tf
    image = tf.constant(_image()[np.newaxis])
    function = tf.saved_model.load(args.child).signatures["serving_default"]

    def call() -> None:
        {key: value.numpy() for key, value in function(input_tensor=image).items()}

    print("ready", flush=True)
    for line in sys.stdin:
        run = _measure(call, CLIENTS, int(line), 3)
        print(json.dumps(run), flush=True)
    return 0


class InProcess:
    def __init__(self, saved_model: Path):
        self.process = subprocess.Popen([sys.executable, __file__, "--child", str(saved_model)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        while self.process.stdout.readline().strip() != "ready":
            if self.process.poll() is not None:
                raise RuntimeError("the in-process child exited")

    def measure(self, requests: int) -> dict:
        self.process.stdin.write(f"{requests}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", type=Path)
    parser.add_argument("--batched-model", type=Path)
    parser.add_argument("--requests", type=int, default=160, help="predicts per row and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated row names to keep (plus the in-process rows)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    if args.saved_model is None:
        parser.error("--saved-model is required")
    from odal.serving.client import ServingClient

    image = _image()[np.newaxis]
    workdir = Path(tempfile.mkdtemp(prefix="odal-bench-batching-"))
    bases = {"plain": model_base(workdir, "plain", args.saved_model),
             "batched": model_base(workdir, "batched", args.batched_model or args.saved_model)}
    rows = settings(workdir)
    if args.only:
        keep = set(args.only.split(","))
        rows = [row for row in rows if row[0] in keep]
    servers, clients, local = {}, {}, {}
    runs: dict[str, list] = {}
    try:
        for index, (name, model, flags) in enumerate(rows):
            servers[name] = start_server(f"s{index}", bases[model], workdir, "bench", *flags, "--rest_api_port=0")
        for name in servers:
            clients[name] = ServingClient(servers[name].address, timeout=300)
            clients[name].wait_until_available("bench", timeout=600)
        local[BASELINE] = InProcess(args.saved_model)
        if args.batched_model:
            local["in-process, 16 threads, [None,H,W,3] export"] = InProcess(args.batched_model)
        order = list(local) + list(servers)
        for round_index in range(-1, args.rounds):  # round -1 warms every row up (first batches of each size)
            random.Random(round_index).shuffle(order)
            for name in order:
                if name in local:
                    run = local[name].measure(args.requests)
                else:
                    client = clients[name]
                    run = _measure(lambda c=client: c.predict_tensors("bench", {"input_tensor": image}), CLIENTS,
                                   args.requests, 3)
                if round_index >= 0:
                    runs.setdefault(name, []).append(run)
                print(f"round {round_index} {name}: {len(run['latencies']) / run['wall']:.1f} req/s", flush=True)
    finally:
        for child in local.values():
            child.stop()
        for client in clients.values():
            client.close()
        stopping = [threading.Thread(target=server.stop) for server in servers.values()]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        shutil.rmtree(workdir, ignore_errors=True)
    import tensorflow as tf

    baseline = _summary(runs[BASELINE])["rps"]
    lines = ["# Serving at 16 concurrent clients: gRPC settings and server-side batching (issue 14 goal 6)", "",
             f"Model: `{args.saved_model.name}` (an odal SSDLite export, input uint8 [1,H,W,3]); batching rows: "
             f"{'the same checkpoint exported with [None,H,W,3]' if args.batched_model else 'the same export'}. "
             f"One 640x480 image, all outputs, {CLIENTS} client threads. {platform.machine()}, {os.cpu_count()} "
             f"CPUs shared with other jobs (load average at the end {os.getloadavg()[0]:.1f}), Python "
             f"{platform.python_version()}, TF {tf.__version__}. {args.rounds} rounds x {args.requests} requests "
             f"per row, rows shuffled each round. The gRPC clients run in the bench process, the in-process rows "
             f"in a child process: both share the same 2 cores with whatever serves.",
             "", "Command: `nice -n 10 python bench/bench_serving_batching.py --saved-model ... "
             f"{'--batched-model ...' if args.batched_model else ''}`", "",
             "| row | p50 ms | p99 ms | req/s | / in-process |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name in list(local) + [row[0] for row in rows]:
        summary = _summary(runs[name])
        label = name if name in local else f"gRPC, {name}"
        lines.append(f"| {label} | {summary['p50']:.1f} | {summary['p99']:.1f} | {summary['rps']:.1f} | "
                     f"{summary['rps'] / baseline:.2f}x |")
    return write_report(args.output, lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
