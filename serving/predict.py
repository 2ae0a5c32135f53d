"""Predict, as TF Serving validates and runs it, shared by the gRPC and REST front ends (no TensorFlow here).

Inputs and outputs are numpy arrays keyed by signature alias; the servable (``loader.Servable``) runs them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from odal.serving import metrics
from odal.serving.errors import ServingError, invalid_argument
from odal.serving.registry import Registry

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
_batcher = None  # a batching.Batcher when the server runs with --enable_batching


def use_batcher(batcher) -> None:
    """Run predicts through ``batcher`` (a ``batching.Batcher``), or directly again with None."""
    global _batcher
    _batcher = batcher


@dataclass(frozen=True)
class Target:
    """Which model a request names: a version, a label, or neither (the latest available)."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass
class Result:
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


def signature_def(servable, signature_name: str):
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(name)
    if signature is None:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
    return name, signature


def check_input(alias: str, value: np.ndarray, info) -> None:
    """An input's rank and fixed sizes against the signature's TensorInfo, before TensorFlow sees it (a
    mismatch inside a traced function is a Python TypeError/ValueError, not a status)."""
    shape = info.tensor_shape
    if shape.unknown_rank:
        return
    want = [dim.size for dim in shape.dim]
    got = list(np.shape(value))
    if len(got) != len(want) or any(w >= 0 and w != g for w, g in zip(want, got)):
        shown = ",".join("?" if w < 0 else str(w) for w in want)
        raise invalid_argument(f"input {alias} has shape [{','.join(map(str, got))}], the signature takes "
                               f"[{shown}]")


def run(registry: Registry, target: Target, signature_name: str, inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = ()) -> Result:
    """Validate a predict request against the signature (TF Serving's checks and messages) and run it."""
    version, servable = registry.servable(target.name, target.version, target.label)
    started = time.perf_counter()
    try:  # counted once the model is known to exist (a client cannot make up label values)
        result = _run(version, servable, signature_name, inputs, output_filter)
    except ServingError as exc:
        metrics.REQUESTS.labels(target.name, exc.code).inc()
        raise
    metrics.REQUESTS.labels(target.name, "OK").inc()
    metrics.LATENCY.labels(target.name).observe(time.perf_counter() - started)
    return result


def _run(version: int, servable, signature_name: str, inputs: Mapping[str, np.ndarray],
         output_filter: Sequence[str]) -> Result:
    name, signature = signature_def(servable, signature_name)
    if signature.method_name not in PREDICT_METHODS:
        raise ServingError("INTERNAL", "Expected prediction signature method_name to be one of {"
                           + ", ".join(PREDICT_METHODS) + "}. Was: " + signature.method_name)
    sent, expected = set(inputs), set(signature.inputs)
    if len(sent) != len(expected):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) "
            f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
    for alias in sorted(sent - expected):
        raise invalid_argument(f"input tensor alias not found in signature: {alias}. Inputs expected to be in the "
                               f"set {{{','.join(sorted(expected))}}}.")
    for alias in sorted(sent):
        check_input(alias, inputs[alias], signature.inputs[alias])
    outputs: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in outputs:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        outputs.append(alias)
    if not outputs:
        outputs = sorted(signature.outputs)
    if _batcher is not None:
        return Result(version, name, _batcher.run(servable, name, signature, inputs, outputs))
    return Result(version, name, servable.run(name, inputs, outputs))
