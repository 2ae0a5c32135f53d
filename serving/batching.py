"""Server-side batching, as TF Serving's ``--enable_batching --batching_parameters_file``: concurrent predicts
that can be one call are run as one.

Requests are batched only where the signature allows it: every input's first dimension is free (-1) and the
requests agree on everything else (same servable, signature, outputs, dtypes and the other dimensions, i.e.
images of the same size).  Anything else, and a request larger than ``max_batch_size``, runs on its own, as do
all requests of a model whose batch dimension is fixed (the OD API export: ``[1, H, W, 3]``).  A batch closes
when it holds ``max_batch_size`` rows or its first request has waited ``batch_timeout_micros``; it is padded
(with copies of its last row) up to the next of ``allowed_batch_sizes``; ``num_batch_threads`` batches run at
once; beyond ``max_enqueued_batches`` full batches waiting, a request is refused ``UNAVAILABLE`` as TF Serving
does.  Outputs without the batch as first dimension cannot be split: that batch is run again request by request.
``pad_variable_length_inputs`` (padding images of different sizes) is accepted and not done: such requests are
simply not batched together.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from odal.serving import metrics
from odal.serving.errors import ServingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parameters:
    max_batch_size: int = 1000  # TF Serving's defaults
    batch_timeout_micros: int = 0
    num_batch_threads: int = 4
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, proto) -> "Parameters":
        values = {name: getattr(proto, name).value for name in
                  ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")
                  if proto.HasField(name)}
        params = cls(**values, allowed_batch_sizes=tuple(proto.allowed_batch_sizes))
        if params.max_batch_size <= 0 or params.num_batch_threads <= 0 or params.max_enqueued_batches <= 0 \
                or params.batch_timeout_micros < 0:
            raise ServingError("INVALID_ARGUMENT", f"batching parameters must be positive: {params}")
        sizes = params.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != params.max_batch_size or sizes[0] <= 0):
            raise ServingError("INVALID_ARGUMENT", "allowed_batch_sizes must increase and end with max_batch_size")
        return params


# odal serve's parameters when --enable_batching (on by default) comes without --batching_parameters_file: the best
# measured at 16 gRPC clients on 2 CPUs (bench/results/serving_batching.md), the same as batching_parameters.txt.
# No batch timeout: a lone request runs at once; under load, what queued while a batch ran forms the next batch.
ODAL_DEFAULT = Parameters(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1, max_enqueued_batches=64)


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    rows: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None


def batchable(signature, inputs: Mapping[str, np.ndarray]) -> int:
    """The batch size of a request if the signature lets it be batched (every input's first dim free), else 0."""
    sizes = set()
    for alias, info in signature.inputs.items():
        shape = info.tensor_shape
        if shape.unknown_rank or not shape.dim or shape.dim[0].size != -1:
            return 0
        value = inputs.get(alias)
        if value is None or value.ndim == 0 or value.dtype == object:
            return 0
        sizes.add(value.shape[0])
    return sizes.pop() if len(sizes) == 1 else 0


class Batcher:
    """Queues of compatible requests and ``num_batch_threads`` threads running them as batches."""

    def __init__(self, params: Parameters):
        self.params = params
        self._cond = threading.Condition()
        self._queues: dict[tuple, tuple[object, list[_Task]]] = {}
        self._waiting_rows = 0
        self._stopped = False
        self._threads = [threading.Thread(target=self._loop, daemon=True, name=f"odal-batch-{i}")
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, servable, signature_name: str, signature, inputs: Mapping[str, np.ndarray],
            outputs: list[str]) -> dict[str, np.ndarray]:
        rows = batchable(signature, inputs)
        if rows == 0 or rows > self.params.max_batch_size:
            return servable.run(signature_name, inputs, outputs)
        key = (id(servable), signature_name, tuple(outputs),
               tuple((alias, value.dtype.str, value.shape[1:]) for alias, value in sorted(inputs.items())))
        task = _Task(inputs, rows, time.monotonic())
        with self._cond:
            if self._waiting_rows + rows > self.params.max_enqueued_batches * self.params.max_batch_size:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this session object "
                                                  "belongs is full")
            self._queues.setdefault(key, (servable, []))[1].append(task)
            self._waiting_rows += rows
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5)

    def _take(self):
        """Wait for a batch to close; (servable, signature name, outputs, tasks) or None when stopped."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._stopped:
                    return None
                ready = [(tasks[0].enqueued, key) for key, (_s, tasks) in self._queues.items() if tasks]
                if not ready:
                    self._cond.wait()
                    continue
                oldest, key = min(ready)
                servable, tasks = self._queues[key]
                left = oldest + timeout - time.monotonic()
                if sum(t.rows for t in tasks) < self.params.max_batch_size and left > 0:
                    self._cond.wait(left)
                    continue
                taken, rows = [], 0
                while tasks and rows + tasks[0].rows <= self.params.max_batch_size:
                    rows += tasks[0].rows
                    taken.append(tasks.pop(0))
                if not tasks:
                    del self._queues[key]
                self._waiting_rows -= rows
                return servable, key[1], list(key[2]), taken

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            servable, name, outputs, tasks = batch
            try:
                self._execute(servable, name, outputs, tasks)
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                for task in tasks:
                    task.error = exc
            for task in tasks:
                task.done.set()

    def _execute(self, servable, name: str, outputs: list[str], tasks: list[_Task]) -> None:
        rows = sum(task.rows for task in tasks)
        if len(tasks) == 1:
            tasks[0].result = servable.run(name, tasks[0].inputs, outputs)
            metrics.BATCH_SIZE.observe(rows)
            return
        padded = next((size for size in self.params.allowed_batch_sizes if size >= rows), rows)
        joined = {}
        for alias in tasks[0].inputs:
            parts = [task.inputs[alias] for task in tasks]
            if padded > rows:
                parts.append(np.repeat(parts[-1][-1:], padded - rows, axis=0))
            joined[alias] = np.concatenate(parts)
        result = servable.run(name, joined, outputs)
        if any(np.ndim(value) == 0 or np.shape(value)[0] != padded for value in result.values()):
            for task in tasks:  # outputs not split by batch: each request on its own
                task.result = servable.run(name, task.inputs, outputs)
            return
        metrics.BATCH_SIZE.observe(rows)
        start = 0
        for task in tasks:
            task.result = {alias: value[start:start + task.rows] for alias, value in result.items()}
            start += task.rows


__all__ = ["Batcher", "ODAL_DEFAULT", "Parameters", "batchable"]
