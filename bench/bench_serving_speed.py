"""REST predict speed (JSON numbers) against gRPC, before and after, and server-side batching at 16 clients.

    nice -n 10 python bench/bench_serving_speed.py --saved-model PATH/TO/EXPORT/VERSION [--compare-commit 621e572]

Part 1 (issue 14 goal 5): one 640x480 image; ``odal serve`` of HEAD and, with ``--compare-commit``, of that
commit's ``serving/`` (``git archive``) serve the same SavedModel side by side; in alternating rounds, gRPC
predicts, then REST predicts with the image as JSON numbers (``{"instances": [[[[r, g, b], ...]]]}``) to each.
Goal: REST p50 <= 3x gRPC p50.

Part 2 (goal 6): 16 client threads.  The in-process call (``tf.saved_model.load``, 16 threads) against gRPC to
HEAD's server without and with ``--enable_batching`` (``serving/batching_parameters.txt``).  The OD API export
takes [1,H,W,3] only, which cannot be batched; the batching row therefore serves a copy whose signature takes
[None,H,W,3] and maps the export's function over the batch (``tf.map_fn``), saved here.  Goal: throughput with
batching >= the in-process call's.  Writes bench/results/serving_speed.md.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_serving import _image, _measure, _summary, model_base, write_report, rest_caller, start_server
from odal.serving.process import ServerProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "serving_speed.md"


def _batchable_copy(saved_model: Path, folder: Path) -> None:
    """The export with a signature taking [None,H,W,3]: its own function mapped over the batch."""
    import tensorflow as tf
    loaded = tf.saved_model.load(str(saved_model))
    function = loaded.signatures["serving_default"]
    specs = {key: tf.TensorSpec(spec.shape[1:], spec.dtype) for key, spec in function.structured_outputs.items()}

    class Batchable(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = loaded

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            def one(image):
                return {key: value[0] for key, value in function(input_tensor=image[tf.newaxis]).items()}
            return tf.map_fn(one, input_tensor, fn_output_signature=specs)

    module = Batchable()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", type=Path, required=True)
    parser.add_argument("--compare-commit", default="")
    parser.add_argument("--requests", type=int, default=30, help="gRPC requests per round")
    parser.add_argument("--rest-requests", type=int, default=10, help="REST requests per round (HEAD)")
    parser.add_argument("--before-requests", type=int, default=2, help="REST requests per round (old commit)")
    parser.add_argument("--load-requests", type=int, default=96, help="requests per 16-client row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import tensorflow as tf
    from odal.serving.client import ServingClient

    image = _image()[np.newaxis]
    body = json.dumps({"instances": image.tolist()}).encode()
    workdir = Path(tempfile.mkdtemp(prefix="odal-bench-speed-"))
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    servers: dict[str, ServerProcess] = {}
    rows: list[tuple[str, dict]] = []
    try:
        base = model_base(workdir, "plain", args.saved_model)
        servers["after"] = start_server("after", base, workdir, "bench", "--enable_batching=false", wait=300)
        if args.compare_commit:
            old = workdir / "old"
            (old / "odal").mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.compare_commit, "serving"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old / "odal")], input=archive, check=True)
            (old / "odal" / "daemon").symlink_to(REPO / "daemon")
            servers["before"] = start_server("before", base, workdir, "bench", pythonpath=str(old), wait=300)
        client = ServingClient(servers["after"].address, timeout=300)
        grpc = lambda: client.predict_tensors("bench", {"input_tensor": image})  # noqa: E731
        runs: dict[str, list] = {"grpc": [], "rest": [], "rest_before": []}
        for _ in range(args.rounds):
            runs["grpc"].append(_measure(grpc, 1, args.requests, 2))
            runs["rest"].append(_measure(rest_caller(servers["after"].rest_port, "bench", body), 1,
                                         args.rest_requests, 1))
            if "before" in servers:
                runs["rest_before"].append(_measure(rest_caller(servers["before"].rest_port, "bench", body), 1,
                                                    args.before_requests, 1))
        rows.append((f"gRPC, HEAD {head}, 1 client", _summary(runs["grpc"])))
        rows.append((f"REST JSON numbers, HEAD {head}, 1 client", _summary(runs["rest"])))
        if runs["rest_before"]:
            rows.append((f"REST JSON numbers, before ({args.compare_commit}), 1 client", _summary(runs["rest_before"])))
        print(rows, flush=True)
        if "before" in servers:
            servers.pop("before").stop()

        _batchable_copy(args.saved_model, workdir / "batchable")
        batching_file = REPO / "serving" / "batching_parameters.txt"
        servers["batching"] = start_server("batching", model_base(workdir, "batchable", workdir / "batchable"),
                                           workdir, "bench", "--enable_batching",
                                           f"--batching_parameters_file={batching_file}", wait=300)
        batched_client = ServingClient(servers["batching"].address, timeout=300)
        function = tf.saved_model.load(str(args.saved_model)).signatures["serving_default"]

        def in_process() -> None:
            {key: value.numpy() for key, value in function(input_tensor=tf.constant(image)).items()}

        batched = lambda: batched_client.predict_tensors("bench", {"input_tensor": image})  # noqa: E731
        load: dict[str, list] = {"local": [], "grpc": [], "batched": []}
        for _ in range(args.rounds):
            load["local"].append(_measure(in_process, 16, args.load_requests, 3))
            load["grpc"].append(_measure(grpc, 16, args.load_requests, 3))
            load["batched"].append(_measure(batched, 16, args.load_requests, 3))
        rows.append(("in-process tf.saved_model.load, 16 threads", _summary(load["local"])))
        rows.append((f"gRPC, HEAD {head}, 16 clients, no batching", _summary(load["grpc"])))
        rows.append((f"gRPC, HEAD {head}, 16 clients, --enable_batching (batchable copy)", _summary(load["batched"])))
        client.close()
        batched_client.close()
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    table = dict(rows)
    grpc1 = table[f"gRPC, HEAD {head}, 1 client"]["p50"]
    rest1 = table[f"REST JSON numbers, HEAD {head}, 1 client"]["p50"]
    local16 = table["in-process tf.saved_model.load, 16 threads"]["rps"]
    lines = ["# Serving speed: REST JSON numbers vs gRPC, and server-side batching at 16 clients", "",
             f"Model: an OD API SSD export (input uint8 [1,H,W,3]); one 640x480 image; all outputs. "
             f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: load average "
             f"{os.getloadavg()[0]:.1f}), Python {platform.python_version()}, TF {tf.__version__}. Loopback; "
             f"{args.rounds} alternating rounds per comparison, so the rows of a comparison see the same load. "
             f"Command: `nice -n 10 python bench/bench_serving_speed.py --saved-model ... "
             f"--compare-commit {args.compare_commit or '-'}`.", "",
             "| path | p50 ms | p99 ms | req/s | n |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} | {r['n']} |" for name, r in rows]
    lines += ["", f"Goal 5, REST p50 <= 3x gRPC p50: **{rest1 / grpc1:.2f}x** "
                  f"({'met' if rest1 <= 3 * grpc1 else 'not met'})."]
    if runs["rest_before"]:
        before = table[f"REST JSON numbers, before ({args.compare_commit}), 1 client"]["p50"]
        lines.append(f"Before: {before / grpc1:.1f}x gRPC; REST p50 after / before: {rest1 / before:.3f}.")
    for key, label in ((f"gRPC, HEAD {head}, 16 clients, no batching", "without batching"),
                       (f"gRPC, HEAD {head}, 16 clients, --enable_batching (batchable copy)", "with batching")):
        ratio = table[key]["rps"] / local16
        lines.append(f"Goal 6, 16-client throughput / in-process 16 threads, {label}: **{ratio:.2f}x** "
                     f"({'met' if ratio >= 1 else 'not met'}).")
    lines.append("Goal 6, each server setting side by side (odal's [None,H,W,3] export, batching on by default): "
                 "[serving_batching.md](serving_batching.md).")
    return write_report(args.output, lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
