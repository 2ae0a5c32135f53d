"""TF Serving's command line for batching and monitoring against ``odal serve``, over real sockets:
``--enable_batching --batching_parameters_file`` runs concurrent compatible predicts as one call with the same
answers as one by one, ``--monitoring_config_file`` serves Prometheus metrics at the configured path, and
``--tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism`` set TensorFlow's threads.

One real ``odal serve`` process, three real SavedModels: ``b`` takes ``input_tensor`` uint8 [-1,-1,-1,3]
(batchable) and answers each image's channel means and the batch size it was run in; ``m`` has the stock OD API
export's shape [1,-1,-1,3] (not batchable: runs alone); ``od`` is a real odal export (the tiny SSD the
``tiny_models`` fixture trains), whose batch dimension is free, so it is batched too.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading

import numpy as np
import pytest

from odal.serving.client import ServingClient
from odal.serving.process import ServerProcess
from serving_fixtures import save_small_model

BATCHING = """max_batch_size { value: 4 }
batch_timeout_micros { value: 500000 }
max_enqueued_batches { value: 8 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 2
allowed_batch_sizes: 4
pad_variable_length_inputs: false
"""
MONITORING = 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'


def _save_batchable(folder):
    import tensorflow as tf

    class Batchable(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            mean = tf.reduce_mean(tf.cast(input_tensor, tf.float32), axis=[1, 2])
            rows = tf.shape(input_tensor)[0]
            return {"mean": mean, "run_batch": tf.fill([rows], rows)}

    module = Batchable()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("batching")
    _save_batchable(root / "b" / "1")
    (root / "m").mkdir()
    save_small_model(root / "m" / "1")
    (root / "od").mkdir()
    (root / "od" / "1").symlink_to(tiny_models["versions"][1])
    (root / "models.config").write_text(
        "model_config_list {\n" + "".join(f'  config {{ name: "{n}" base_path: "{root / n}" '
                                          f'model_platform: "tensorflow" }}\n' for n in ("b", "m", "od")) + "}\n")
    (root / "batching.txt").write_text(BATCHING)
    (root / "monitoring.txt").write_text(MONITORING)
    with ServerProcess(root / "serve.log", f"--model_config_file={root / 'models.config'}", "--enable_batching",
                       f"--batching_parameters_file={root / 'batching.txt'}",
                       f"--monitoring_config_file={root / 'monitoring.txt'}",
                       "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=2") as process:
        process.log_path = root / "serve.log"
        with ServingClient(process.address, timeout=60) as client:
            client.wait_until_available("b", timeout=180)
            client.wait_until_available("m", timeout=180)
            client.wait_until_available("od", timeout=180)
        yield process
        assert process.process.poll() is None, "the server exited"


def _concurrently(call, count: int) -> list:
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_concurrent_predicts_run_as_batches_with_the_same_answers_as_one_by_one(server):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1, 24, 32, 3), dtype=np.uint8) for _ in range(7)]
    odd = rng.integers(0, 256, (1, 20, 20, 3), dtype=np.uint8)  # another size: never in the same batch
    with ServingClient(server.address, timeout=60) as client:
        alone = [client.predict_tensors("b", {"input_tensor": image})[0]["mean"] for image in images + [odd]]
        sizes = [client.predict_tensors("b", {"input_tensor": image})[0]["run_batch"][0] for image in images]
        assert max(sizes) == 1  # one at a time: never batched

        def call(index: int):
            image = (images + [odd])[index]
            return client.predict_tensors("b", {"input_tensor": image})[0]

        answers = _concurrently(call, 8)
        fixed = _concurrently(lambda i: client.predict_tensors("m", {"input_tensor": images[i]})[0]["mean"], 4)
    batched = [int(answer["run_batch"][0]) for answer in answers]
    assert max(batched[:7]) > 1, batched  # the batcher ran some together (padded to 2 or 4)
    assert set(batched) <= {1, 2, 4}, batched  # allowed_batch_sizes
    assert batched[7] == 1 or batched[7] in (2, 4)  # the odd size ran in its own (possibly padded) batch
    for answer, expected in zip(answers, alone):
        assert answer["mean"].shape == (1, 3)
        np.testing.assert_allclose(answer["mean"], expected, rtol=1e-6)
    for mean, image in zip(fixed, images):  # batch dim fixed at 1: run alone, right answers
        np.testing.assert_allclose(mean[0], image.reshape(-1, 3).mean(axis=0), rtol=1e-5)


def _metrics(server) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        conn.request("GET", "/monitoring/prometheus/metrics")
        answer = conn.getresponse()
        return answer.read().decode()
    finally:
        conn.close()


def _batch_sizes(text: str) -> tuple[float, float]:
    """(requests run, batches run) so far, from the batch-size histogram's _sum and _count."""
    name = ":tensorflow:serving:batching_session:processed_batch_size"
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(name + "_sum") or line.startswith(name + "_count")}
    return values[name + "_sum"], values[name + "_count"]


def test_odal_exports_are_batched_with_the_same_detections_as_one_by_one(server, tiny_models):
    from PIL import Image

    images = []
    for path in tiny_models["images"][:6]:
        with Image.open(path) as decoded:
            images.append(np.asarray(decoded.convert("RGB"))[np.newaxis])
    with ServingClient(server.address, timeout=120) as client:
        alone = [client.predict_tensors("od", {"input_tensor": image})[0] for image in images]
        before = _batch_sizes(_metrics(server))
        together = _concurrently(lambda i: client.predict_tensors("od", {"input_tensor": images[i]})[0], 6)
        after = _batch_sizes(_metrics(server))
    requests, batches = after[0] - before[0], after[1] - before[1]
    assert requests == 6 and batches < 6, (requests, batches)  # some ran together: the export's batch dim is free
    for one, batched in zip(alone, together):
        assert batched["detection_boxes"].shape == one["detection_boxes"].shape
        assert batched["num_detections"] == one["num_detections"]
        np.testing.assert_allclose(np.sort(batched["detection_scores"]), np.sort(one["detection_scores"]),
                                   atol=1e-4)
        np.testing.assert_allclose(batched["image_embedding"], one["image_embedding"], rtol=1e-4, atol=1e-5)


def test_the_monitoring_config_path_serves_prometheus_metrics_on_the_rest_port(server):
    with ServingClient(server.address, timeout=60) as client:
        client.predict_tensors("m", {"input_tensor": np.zeros((1, 4, 4, 3), np.uint8)})
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        conn.request("GET", "/monitoring/prometheus/metrics")
        answer = conn.getresponse()
        text = answer.read().decode()
    finally:
        conn.close()
    assert answer.status == 200 and answer.getheader("Content-Type").startswith("text/plain")
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(":tensorflow:serving:request_count_total")}
    assert counts.get(':tensorflow:serving:request_count_total{model_name="m",status="OK"}', 0) >= 1, text[:2000]
    assert ":tensorflow:serving:batching_session:processed_batch_size_bucket" in text


def test_tensorflow_thread_flags_are_applied_and_a_negative_count_is_refused(server, tmp_path):
    with ServingClient(server.address, timeout=60) as client:  # the server with both flags serves
        mean = client.predict_tensors("m", {"input_tensor": np.full((1, 2, 2, 3), 7, np.uint8)})[0]["mean"]
    np.testing.assert_allclose(mean, [[7, 7, 7]])
    assert "TensorFlow threads: intra-op 1, inter-op 2" in server.log_path.read_text()
    refused = subprocess.run([sys.executable, "-m", "odal.serving.server", f"--model_base_path={tmp_path}",
                              "--port=0", "--rest_api_port=0", "--tensorflow_inter_op_parallelism=-1"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "argument --tensorflow_inter_op_parallelism: must be >= 0, got -1" in refused.stderr


def test_batching_is_on_by_default_with_the_shipped_measured_parameters():
    """Without batching flags odal serve batches (odal's exports are batchable), with the parameters measured best
    (bench/results/serving_batching.md), which serving/batching_parameters.txt ships for either server; a TF
    Serving command line's --enable_batching=false still turns it off."""
    from pathlib import Path

    from odal.serving import batching, config_protos
    from odal.serving.server import build_parser

    assert build_parser().parse_args([]).enable_batching is True
    assert build_parser().parse_args(["--enable_batching=false"]).enable_batching is False
    shipped = Path(batching.__file__).with_name("batching_parameters.txt")
    assert batching.Parameters.from_proto(config_protos.read_text_proto(
        str(shipped), config_protos.BatchingParameters)) == batching.ODAL_DEFAULT
    assert batching.ODAL_DEFAULT.batch_timeout_micros == 0  # a lone request never waits for a batch to fill
