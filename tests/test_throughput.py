"""The worker's throughput settings (odal.daemon.worker.throughput): several train steps per tf.function call do the
same steps as one at a time, and the cached train input re-reads each round's records and still augments anew.

The full OD API path (10 steps a call, the cache) runs in every worker test that trains (tests/test_worker*.py,
test_tensorboard.py: progress, learning rate, summaries per round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import tensorflow as tf
from object_detection.protos import input_reader_pb2

from odal.daemon.sources import datasets
from odal.daemon.worker import throughput
from odal.daemon.worker.tfrecords import write_records


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(1, 120), per_call=st.integers(1, 40))
def test_calls_cover_every_step_once_and_end_on_every_progress_report(steps, per_call):
    calls = list(throughput.chunks(steps, per_call))
    covered = [step for first, count in calls for step in range(first, first + count)]
    assert covered == list(range(1, steps + 1))
    assert calls[0] == (1, 1)  # the first step alone: its time is the trace, reported as first_step_seconds
    ends = {first + count - 1 for first, count in calls}
    reports = {step for step in range(1, steps + 1) if step % throughput.REPORT_EVERY == 0 or step == steps}
    assert reports <= ends
    assert all(count <= per_call for _, count in calls)


def _toy_training():
    """A real (small) training: a linear model, SGD whose rate follows ``schedule_step``, a step counter."""
    data = tf.data.Dataset.from_tensor_slices((tf.random.stateless_normal([64, 3], seed=[1, 2]),
                                               tf.random.stateless_normal([64, 1], seed=[3, 4]))).batch(4).repeat()
    weights = tf.Variable(tf.ones([3, 1]))
    schedule_step = tf.Variable(0, dtype=tf.int64)
    counter = tf.Variable(0, dtype=tf.int64)
    optimizer = tf.keras.optimizers.SGD(learning_rate=lambda: 0.1 / (1.0 + tf.cast(schedule_step, tf.float32)))
    optimizer.build([weights])  # its variables made now: a trace that makes variables is traced again

    def train_step(iterator):
        features, targets = next(iterator)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((features @ weights - targets) ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, weights), weights)])
        counter.assign_add(1)
        return {"Loss/total_loss": loss, "Loss/other": 2 * loss}

    return data, weights, schedule_step, counter, throughput.several_steps(train_step, schedule_step)


def test_several_steps_a_call_train_exactly_as_one_step_a_call(monkeypatch):
    steps, scale = 23, 200 / 23  # a round's steps and the config's schedule compressed into them
    results = []
    for per_call in (1, 10):
        monkeypatch.setenv("ODAL_TRAIN_STEPS_PER_CALL", str(per_call))  # 1: the function without a loop
        data, weights, schedule_step, counter, run = _toy_training()
        iterator, losses = iter(data), []
        run.get_concrete_function(iterator, *throughput.call_args(1, 1, 1.0))  # as the worker's prewarm traces it
        for first, count in throughput.chunks(steps, per_call):
            last, totals = run(iterator, *throughput.call_args(first, count, scale))
            losses += totals.numpy().tolist()
            assert float(last["Loss/other"]) == pytest.approx(2 * losses[-1])
        assert run.experimental_get_tracing_count() == 1  # every call reuses the prewarm's trace
        results.append((weights.numpy(), losses, int(counter.numpy()), int(schedule_step.numpy())))
    (one_weights, one_losses, one_count, one_sched), (ten_weights, ten_losses, ten_count, ten_sched) = results
    assert one_count == ten_count == steps  # the step counter advances once per step
    assert one_sched == ten_sched == int((steps - 1) * scale)  # the last step's schedule step, as set before it
    assert len(ten_losses) == steps and ten_losses == pytest.approx(one_losses, rel=1e-6)
    assert ten_weights == pytest.approx(one_weights, rel=1e-6)
    assert ten_losses[-1] < ten_losses[0]  # it learned


def _records(folder: Path, count: int, seed: int) -> Path:
    """A train.record of ``count`` generated images (real JPEGs) through the worker's own record writer."""
    items = datasets.generate_shapes(folder / "images", count, seed=seed, size=(64, 48))
    with open(folder / "annotations.jsonl", "w", encoding="utf-8") as out:
        for index, item in enumerate(items):
            boxes = [{"label": b[0], "label_id": 1, "xmin": b[1] / item.width, "ymin": b[2] / item.height,
                      "xmax": b[3] / item.width, "ymax": b[4] / item.height} for b in item.boxes]
            out.write(json.dumps({"input_hash": f"{seed}-{index}", "image_path": str(item.image), "boxes": boxes,
                                  "split": "train"}) + "\n")
    write_records(folder / "annotations.jsonl", folder)
    return folder / "train.record"


def test_the_cached_input_reads_each_rounds_new_records_and_augments_after_the_cache(tmp_path):
    link = tmp_path / "train.record"  # the session reads every round's records through one stable path
    link.symlink_to(_records(tmp_path / "r1", 3, seed=1))
    reader = input_reader_pb2.InputReader()
    reader.tf_record_input_reader.input_path.append(str(link))

    def augment(example):  # a random draw per element, as the OD API's augmentation makes
        return {"id": example["source_id"], "draw": tf.random.uniform([])}

    dataset = throughput.cached_build(reader, transform_input_data_fn=augment)
    iterator = iter(dataset)
    first = [next(iterator) for _ in range(9)]  # three epochs of round 1
    assert {e["id"].numpy() for e in first} == {b"1-0", b"1-1", b"1-2"}
    draws = {}
    for element in first:
        draws.setdefault(element["id"].numpy(), set()).add(float(element["draw"]))
    assert all(len(values) == 3 for values in draws.values())  # each epoch of an image is augmented anew

    link.unlink()
    link.symlink_to(_records(tmp_path / "r2", 4, seed=2))  # round 2: new records at the same path
    iterator = iter(dataset)
    assert {next(iterator)["id"].numpy() for _ in range(8)} == {b"2-0", b"2-1", b"2-2", b"2-3"}


def test_the_cache_is_kept_to_record_files_whose_decoded_pixels_fit_the_bound(tmp_path, monkeypatch):
    record = _records(tmp_path, 3, seed=1)
    assert throughput.decoded_mib(str(record)) == pytest.approx(3 * 64 * 48 * 3 / 2 ** 20)
    assert throughput.cache_fits(str(record))
    monkeypatch.setenv("ODAL_TRAIN_CACHE_MIB", "0.01")
    assert not throughput.cache_fits(str(record))
