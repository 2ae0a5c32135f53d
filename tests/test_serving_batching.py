"""TF Serving's command line for batching and monitoring against ``odal serve``, over real sockets:
``--enable_batching --batching_parameters_file`` runs concurrent compatible predicts as one call with the same
answers as one by one, and ``--monitoring_config_file`` serves Prometheus metrics at the configured path.

One real ``odal serve`` process, two real SavedModels: ``b`` takes ``input_tensor`` uint8 [-1,-1,-1,3] (batchable)
and answers each image's channel means and the batch size it was run in; ``m`` is the OD API export's shape
[1,-1,-1,3] (not batchable: runs alone).
"""

from __future__ import annotations

import http.client
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
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    _save_batchable(root / "b" / "1")
    (root / "m").mkdir()
    save_small_model(root / "m" / "1")
    (root / "models.config").write_text(
        "model_config_list {\n" + "".join(f'  config {{ name: "{n}" base_path: "{root / n}" '
                                          f'model_platform: "tensorflow" }}\n' for n in ("b", "m")) + "}\n")
    (root / "batching.txt").write_text(BATCHING)
    (root / "monitoring.txt").write_text(MONITORING)
    with ServerProcess(root / "serve.log", f"--model_config_file={root / 'models.config'}", "--enable_batching",
                       f"--batching_parameters_file={root / 'batching.txt'}",
                       f"--monitoring_config_file={root / 'monitoring.txt'}") as process:
        with ServingClient(process.address, timeout=60) as client:
            client.wait_until_available("b", timeout=180)
            client.wait_until_available("m", timeout=180)
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
