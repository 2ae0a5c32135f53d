"""The worker's training-throughput settings, and the cached train input pipeline (measured in
bench/results/throughput.md; each setting can be turned off by its environment variable).

* ``ODAL_TRAIN_STEPS_PER_CALL`` (default 10): train steps run inside one ``tf.function`` call (a ``tf.range`` loop,
  as the OD API's own ``num_steps_per_iteration``).  A call never runs past a progress report (every 10 steps).
* ``ODAL_TRAIN_CACHE`` (default 1): the decoded train images are kept in memory after the first epoch (when the
  record file holds at most ``ODAL_TRAIN_CACHE_MIB`` MiB of decoded pixels, default 1024); the random
  augmentation, resizing and padding still run after the cache, on every step.
* ``ODAL_TRAIN_THREADS`` ("inter,intra", default TensorFlow's): ``tf.config.threading`` at the session's start.
* ``ODAL_TRAIN_XLA`` (default 0): ``jit_compile`` on the train step.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf
from object_detection import inputs
from object_detection.builders import decoder_builder
from object_detection.protos import input_reader_pb2

REPORT_EVERY = 10  # the train loop's progress reports and summaries: every 10 steps (and the last)


def steps_per_call() -> int:
    return max(1, int(os.environ.get("ODAL_TRAIN_STEPS_PER_CALL", "10")))


def cache_enabled() -> bool:
    return os.environ.get("ODAL_TRAIN_CACHE", "1") != "0"


def xla() -> bool:
    return os.environ.get("ODAL_TRAIN_XLA", "0") == "1"


def configure_threads() -> None:
    """``ODAL_TRAIN_THREADS=inter,intra``; nothing when unset or when TensorFlow has already started."""
    value = os.environ.get("ODAL_TRAIN_THREADS")
    if not value:
        return
    inter, intra = (int(part) for part in value.split(","))
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    except RuntimeError:  # the runtime is up: TensorFlow keeps its threads
        pass


def chunks(steps: int, per_call: int):
    """(first step, count) of each call: the first step alone (its time is the trace), then calls of at most
    ``per_call`` steps that end on every progress report (a multiple of REPORT_EVERY, or the last step)."""
    done = 0
    while done < steps:
        count = 1 if done == 0 else min(per_call, REPORT_EVERY - done % REPORT_EVERY, steps - done)
        yield done + 1, count
        done += count


def call_args(first: int, count: int, scale: float) -> tuple:
    """The tensors a call of :func:`several_steps` takes after the iterator (one trace for every call)."""
    return tf.constant(first, tf.int64), tf.constant(count, tf.int64), tf.constant(scale, tf.float64)


def several_steps(train_step, schedule_step):
    """A ``tf.function`` running ``train_step(iterator)`` (one step's losses dict) ``count`` times, the steps
    ``first``.. of a round; before each, ``schedule_step`` := int((step - 1) * scale), as the step-by-step loop set
    it (see odal.daemon.worker.session).  Returns the last step's losses and every step's total loss.  The step is
    traced twice (before the loop and in it): with ``ODAL_TRAIN_STEPS_PER_CALL=1`` the function has no loop."""

    def step(iterator, first, scale, index):
        schedule_step.assign(tf.cast(tf.cast(first - 1 + index, tf.float64) * scale, tf.int64))
        return train_step(iterator)

    if steps_per_call() == 1:  # no loop in the graph: the step is traced once, not twice (before and in the loop)
        @tf.function
        def one(iterator, first, count, scale):  # noqa: ARG001 - count is 1
            last = step(iterator, first, scale, tf.constant(0, tf.int64))
            return last, tf.expand_dims(last["Loss/total_loss"], 0)

        return one

    @tf.function
    def steps(iterator, first, count, scale):
        last = step(iterator, first, scale, tf.constant(0, tf.int64))
        totals = tf.TensorArray(tf.float32, size=tf.cast(count, tf.int32)).write(0, last["Loss/total_loss"])
        for index in tf.range(tf.constant(1, tf.int64), count):
            last = step(iterator, first, scale, index)
            totals = totals.write(tf.cast(index, tf.int32), last["Loss/total_loss"])
        return last, totals.stack()

    return steps


def run_steps(session, iterator, steps: int, scale: float, progress) -> tuple:
    """Run a round's ``steps`` train steps of ``session`` (several a call), writing its summaries and progress as
    a step-by-step loop did: the learning rate at step 1 and every 10th (read before the step), the losses and a
    progress report every 10th step and the last.  Returns (last loss, every step's loss, the rates recorded,
    seconds to the end of the first step)."""
    started = time.monotonic()
    loss, losses, rates, first_step_seconds = float("nan"), [], [], None
    for first, count in chunks(steps, steps_per_call()):  # steps first .. first + count - 1
        done, at_step = first + count - 1, int(session.global_step.numpy())
        for reported in sorted({first, done}):  # no other step of a call is a reported one
            if reported == 1 or reported % REPORT_EVERY == 0 or reported == steps:
                session.schedule_step.assign(int((reported - 1) * scale))
                rates.append(session.learning_rate())
                tf.summary.scalar("learning_rate", rates[-1], step=at_step + reported - first)
        step_losses, call_losses = session._train_step(iterator, *call_args(first, count, scale))  # noqa: SLF001
        loss = float(step_losses["Loss/total_loss"])
        losses.extend(round(float(value), 6) for value in call_losses.numpy())
        if first_step_seconds is None:
            first_step_seconds = time.monotonic() - started
        if done % REPORT_EVERY == 0 or done == steps:
            for name, value in step_losses.items():  # loss/total, loss/localization_loss, ...
                tag = "loss/total" if name == "Loss/total_loss" else "loss/" + name.split("/", 1)[-1]
                tf.summary.scalar(tag, value, step=session.global_step)
            progress(done, steps, loss)
    return loss, losses, rates, first_step_seconds


def decoded_mib(record_path: str) -> float:
    """MiB of decoded pixels of the images in a TFRecord file (from their ``image/height`` and ``image/width``)."""
    total = 0
    for raw in tf.data.TFRecordDataset(record_path):
        example = tf.train.Example.FromString(raw.numpy())
        features = example.features.feature
        height = features["image/height"].int64_list.value
        width = features["image/width"].int64_list.value
        if not height or not width:
            return float("inf")
        total += height[0] * width[0] * 3
    return total / 2 ** 20


def cache_fits(record_path: str) -> bool:
    return decoded_mib(record_path) <= float(os.environ.get("ODAL_TRAIN_CACHE_MIB", "1024"))


def cached_build(input_reader_config, batch_size=None, transform_input_data_fn=None, input_context=None,
                 reduce_to_frame_fn=None):  # noqa: ARG001 - the identity for the (non-sequence) examples cached
    """``dataset_builder.build`` (records -> decode -> transform -> batch -> prefetch) with the decoded examples
    cached in memory before the transform, so that each image is read and decoded once per iterator, and its
    random augmentation drawn anew each step.  The cache lives in the iterator (built inside ``flat_map``): a new
    iterator, as each round makes over its new record file, reads the file again.  A whole-dataset shuffle each
    epoch replaces the stock shuffle buffer over the repeated records."""
    config = input_reader_config.tf_record_input_reader
    decoder = decoder_builder.build(input_reader_config)
    files = tf.io.gfile.glob(list(config.input_path))
    if not files:
        raise RuntimeError(f"no input files match {list(config.input_path)}")
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    reader = input_reader_config

    def epochs(_):
        names = tf.data.Dataset.from_tensor_slices(files)
        if input_context is not None and input_context.num_input_pipelines > 1:
            names = names.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        records = names.interleave(lambda name: tf.data.TFRecordDataset(name, buffer_size=8 * 1000 * 1000),
                                   cycle_length=max(1, min(reader.num_readers, len(files))))
        if reader.sample_1_of_n_examples > 1:
            records = records.shard(reader.sample_1_of_n_examples, 0)
        decoded = records.map(decoder.decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
        if reader.shuffle:
            decoded = decoded.shuffle(reader.shuffle_buffer_size, reshuffle_each_iteration=True)
        return decoded.repeat(reader.num_epochs or None)

    dataset = tf.data.Dataset.from_tensors(0).flat_map(epochs)
    if transform_input_data_fn is not None:
        dataset = dataset.map(transform_input_data_fn, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size:
        dataset = dataset.batch(batch_size, drop_remainder=reader.drop_remainder)
    return dataset.prefetch(reader.num_prefetch_batches or tf.data.AUTOTUNE)


def train_input(cache: bool, **kwargs):
    """``inputs.train_input(**kwargs)``, through :func:`cached_build` when ``cache`` (via the OD API's own hook,
    ``inputs.INPUT_BUILDER_UTIL_MAP['dataset_build']``, restored afterwards)."""
    if not cache or kwargs["train_input_config"].input_type == input_reader_pb2.InputType.TF_SEQUENCE_EXAMPLE:
        return inputs.train_input(**kwargs)  # (sequence examples are decoded per frame, after the decoder)
    plain = inputs.INPUT_BUILDER_UTIL_MAP["dataset_build"]
    inputs.INPUT_BUILDER_UTIL_MAP["dataset_build"] = cached_build
    try:
        return inputs.train_input(**kwargs)
    finally:
        inputs.INPUT_BUILDER_UTIL_MAP["dataset_build"] = plain
