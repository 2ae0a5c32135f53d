"""tf.distribute for rounds: the strategy a worker process trains under, chosen by the job's ``distribute`` spec.

``[training] strategy`` in odal.toml (see ``odal.daemon.rounds.distributed.spec``):

* ``default``: TensorFlow's default strategy, one device (what the worker always did).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over all local GPUs, or over ``cpu_devices`` logical CPU devices
  when that is set (for tests and for measuring on a machine without GPUs).
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` with ``TF_CONFIG`` built from ``workers`` and
  ``index``.  Worker 0 is the chief: it alone keeps checkpoints, evaluates, exports and publishes.

The strategy is made once per process, before TensorFlow runs anything (logical devices and collective ops can only
be configured then), so the worker makes it when its first job arrives.  A multi-worker process runs one round and
ends (the daemon retires it), so each round forms its collective group afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import tensorflow as tf

from odal.daemon.rounds.contracts import Distribute

# How long one collective (a gradient all-reduce, the first of which waits for every worker) may wait for the
# other workers before the round fails; a worker that never comes must not hang the daemon's round forever.
COLLECTIVE_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Distribution:
    spec: Distribute | None  # None: TensorFlow's default strategy
    strategy: object | None

    @property
    def index(self) -> int:
        return self.spec.index if self.spec is not None else 0

    @property
    def is_chief(self) -> bool:
        return self.spec is None or self.spec.strategy != "multi_worker" or self.spec.index == 0

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def scope(self):
        """The strategy's scope (variables made in it are mirrored), or nothing for the default strategy."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


DEFAULT = Distribution(None, None)
_CURRENT: Distribution | None = None


def current() -> Distribution:
    return _CURRENT or DEFAULT


def configure(spec: Distribute | None) -> Distribution:
    """The process's strategy for ``spec``, made on first call; a later job with another spec is refused (the
    daemon's client starts a new worker when the configuration changes)."""
    global _CURRENT
    if spec is not None and spec.strategy == "default":
        spec = None
    if _CURRENT is not None:
        if _CURRENT.spec != spec:
            raise RuntimeError(f"this worker trains with {_CURRENT.spec}; a job asked for {spec} (restart it)")
        return _CURRENT
    _CURRENT = Distribution(spec, _build(spec) if spec is not None else None)
    return _CURRENT


def _build(spec: Distribute):
    kind, cpu_devices = spec.strategy, spec.cpu_devices
    if kind == "mirrored":
        if cpu_devices > 0:
            cpus = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()  # all local GPUs (one CPU device when there is none)
    if kind == "multi_worker":
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": list(spec.workers)},
                                              "task": {"type": "worker", "index": spec.index}})
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"training.strategy: unknown strategy {kind!r}")


def input_context(context) -> tf.distribute.InputContext:
    """What the OD API's input pipeline is told: the per-replica batch (the global batch split per replica), but
    one input pipeline, so that it does not shard the round's single record file by file (worker 1 of 2 would get
    no file at all).  Each worker reads all the data in its own shuffled order instead."""
    return tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                      num_replicas_in_sync=context.num_replicas_in_sync)
