"""``bench_serving.py --rest-load``: odal serve under many REST clients and a few hostile requests (see there)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from odal.serving.process import ServerProcess

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from serving_fixtures import peak_rss_mib, save_small_model  # noqa: E402

from bench_serving import start_server  # noqa: E402

IMAGE = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(1, 4, 5, 3)


def _post(port: int, body: bytes, timeout: float = 60.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/models/m:predict", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def _load(port: int, clients: int, per_client: int) -> dict:
    body = json.dumps({"instances": IMAGE.tolist()}).encode()
    errors: dict[str, int] = {}
    latencies: list[float] = []
    lock, start = threading.Lock(), threading.Barrier(clients)

    def client() -> None:
        start.wait()
        for _ in range(per_client):
            began = time.perf_counter()
            try:
                status = _post(port, body)
                kind = None if status == 200 else f"HTTP {status}"
            except OSError as exc:
                kind = type(exc).__name__
            with lock:
                latencies.append(time.perf_counter() - began)
                if kind:
                    errors[kind] = errors.get(kind, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"errors": errors, "latencies": latencies, "wall": time.perf_counter() - began}


def _hostile(server: ServerProcess) -> dict:
    """Three hostile requests; what each got, in a few words."""
    import grpc

    from odal.serving._protos import predict_pb2, prediction_service_pb2_grpc, types_pb2

    seen = {}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs["input_tensor"]
    tensor.dtype = types_pb2.DT_UINT8  # the model's input type: an old server filled it in
    for size in (1, 10000, 10000, 3):
        tensor.tensor_shape.dim.add().size = size
    with grpc.insecure_channel(server.address) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
            seen["gRPC [1,10000,10000,3] uint8, no values"] = "OK (allocated)"
        except grpc.RpcError as exc:
            seen["gRPC [1,10000,10000,3] uint8, no values"] = exc.code().name
    bad = json.dumps({"instances": "x" * (6 << 20)}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    conn.request("POST", "/v1/models/m:predict", bad)
    answer = conn.getresponse()
    seen["REST 6 MB malformed body"] = f"{answer.status}, {len(answer.read())} bytes of error"
    conn.close()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n")
        try:
            seen["REST Content-Length 10^15"] = sock.recv(64).split(b"\r\n")[0].decode() or "closed"
        except (socket.timeout, ConnectionError) as exc:
            seen["REST Content-Length 10^15"] = type(exc).__name__
    return seen


def _start(label: str, base: Path, workdir: Path, pythonpath: str | None) -> ServerProcess:
    server = start_server(label, base, workdir, "m", pythonpath=pythonpath, wait=300)
    _post(server.rest_port, json.dumps({"instances": IMAGE.tolist()}).encode())
    return server


def _merge(parts: list[dict]) -> dict:
    errors: dict[str, int] = {}
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    latencies = sorted(x for part in parts for x in part["latencies"])
    return {"errors": errors, "p50": statistics.median(latencies) * 1000, "mean": statistics.fmean(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000, "n": len(latencies),
            "rps": len(latencies) / sum(part["wall"] for part in parts)}


def _measure_all(servers: list[tuple[str, ServerProcess]], clients: int, per_client: int, rounds: int = 4) -> list:
    """The load in ``rounds`` alternating slices per server (both see the same background load), then the
    hostile requests; one result per server."""
    parts: dict[str, list[dict]] = {label: [] for label, _ in servers}
    for index in range(rounds):
        for label, server in servers:
            share = per_client // rounds + (1 if index < per_client % rounds else 0)
            parts[label].append(_load(server.rest_port, clients, share))
    results = []
    for label, server in servers:
        result = _merge(parts[label])
        result["peak_after_load"] = peak_rss_mib(server.process.pid)
        result["hostile"] = _hostile(server)
        result["peak_after_hostile"] = peak_rss_mib(server.process.pid)
        result["alive"] = server.process.poll() is None
        print(label, {k: v for k, v in result.items()}, flush=True)
        results.append((label, result))
    return results


def run_hostile(clients: int, per_client: int, compare_commit: str, output: Path) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="odal-bench-hostile-"))
    try:
        base = workdir / "models" / "m"
        base.mkdir(parents=True)
        save_small_model(base / "1")
        servers = []
        try:
            if compare_commit:
                old = workdir / "old"
                (old / "odal").mkdir(parents=True)
                archive = subprocess.run(["git", "-C", str(REPO), "archive", compare_commit, "serving"],
                                         check=True, capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(old / "odal")], input=archive, check=True)
                (old / "odal" / "daemon").symlink_to(REPO / "daemon")
                servers.append((f"before ({compare_commit})", _start("before", base, workdir, str(old))))
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
            servers.append((f"after ({head})", _start("after", base, workdir, None)))
            runs = _measure_all(servers, clients, per_client)
        finally:
            for _label, server in servers:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        "# odal serve under many REST clients and hostile requests",
        "",
        f"`python bench/bench_serving.py --rest-load --clients {clients} --per-client {per_client}"
        f"{' --compare-commit ' + compare_commit if compare_commit else ''}`: {clients} threads x {per_client} REST "
        f"predicts of a 4x5 image on a small real SavedModel, each predict on a new connection; then the hostile "
        f"requests. {os.cpu_count()} CPUs shared with other work, loopback, default server flags.",
        "",
        "| server | requests | connection errors | p50 ms | mean ms | p99 ms | req/s | peak RSS after load MiB | "
        "peak RSS after hostile MiB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in runs:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append(f"| {label} | {r['n']} | {errors} | {r['p50']:.1f} | {r['mean']:.1f} | {r['p99']:.1f} | "
                     f"{r['rps']:.0f} | "
                     f"{r['peak_after_load']:.0f} | {r['peak_after_hostile']:.0f} |")
    lines += ["", "| server | hostile request | answer |", "| --- | --- | --- |"]
    for label, r in runs:
        for what, answer in r["hostile"].items():
            lines.append(f"| {label} | {what} | {answer} |")
    table = "\n".join(lines) + "\n"
    print(table)
    from odal.daemon.system.atomic import atomic_write_text
    atomic_write_text(output, table)
    return 0
