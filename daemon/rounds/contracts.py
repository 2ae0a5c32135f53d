"""The round stage contracts between the daemon and the TensorFlow worker child, and their JSON lines.

No TensorFlow here: the daemon, the worker, the benchmarks and the tests all speak through these types.  One
message per line on the worker's stdin (a :class:`RoundJob`) and stdout (:class:`Ready` once, then for each job
any number of :class:`Progress` and exactly one :class:`RoundResult` or :class:`JobFailed`).  Every answer echoes
the job's ``round_id``; :func:`decode` refuses a line that is not one of these messages (:class:`ProtocolError`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import orjson


class ProtocolError(ValueError):
    """A line that is not a message of this protocol (bad JSON, unknown type, missing or unknown field)."""


@dataclass(frozen=True)
class FineTune:
    """The checkpoint a first round starts from (the OD API's ``fine_tune_checkpoint`` and its type)."""

    path: str
    type: str


@dataclass(frozen=True)
class GateSpec:
    """The publish gate (odal.daemon.rounds.gate): the metric compared and the tolerance."""

    metric: str
    tolerance: float


@dataclass(frozen=True)
class Served:
    """The version TF Serving serves now; the gate evaluates it on the candidate's eval data."""

    version: int
    path: Path


@dataclass(frozen=True)
class Distribute:
    """The tf.distribute strategy a round trains under (odal.daemon.worker.distribute): ``mirrored`` over the local
    GPUs (or ``cpu_devices`` logical CPU devices), or ``multi_worker`` over ``workers`` (host:port), this process
    being ``index`` (0: the chief, which alone keeps the checkpoint, evaluates and exports)."""

    strategy: str
    cpu_devices: int = 0
    workers: tuple[str, ...] = ()
    index: int = 0


@dataclass(frozen=True)
class RoundJob:
    """Everything a round reads and writes, by path.  ``round_dir`` holds annotations.jsonl (input), the records,
    the recorded pipeline.config and logs; the checkpoint and SavedModel appear whole at ``checkpoint_dir`` and
    ``export_dir`` (written aside, renamed).  ``init_checkpoint`` (the previous round's prefix) wins over
    ``fine_tune``; without ``gate`` every round is exported; without ``served`` nothing is compared."""

    round_id: int
    round_dir: Path
    pipeline_config: Path
    label_map: Path
    num_classes: int
    steps: int
    checkpoint_dir: Path
    export_dir: Path
    init_checkpoint: str | None = None
    fine_tune: FineTune | None = None
    tensorboard_dir: Path | None = None
    gate: GateSpec | None = None
    served: Served | None = None
    distribute: Distribute | None = None  # None: TensorFlow's default strategy (one device)


@dataclass(frozen=True)
class Ready:
    """The worker has imported TensorFlow and waits for jobs."""

    pid: int


@dataclass(frozen=True)
class Progress:
    """A stage started (``step`` is None), or a training step of ``of`` finished with ``loss``."""

    round_id: int
    stage: str
    step: int | None = None
    of: int | None = None
    loss: float | None = None


@dataclass(frozen=True)
class RoundResult:
    """What a finished job produced.  ``export`` is how the SavedModel was written ("full", "weights", ...) or
    None when the gate held the candidate back (then ``gate["passed"]`` is false and nothing was exported)."""

    round_id: int
    counts: dict[str, int]
    train: dict[str, Any]
    session_reused: bool
    export: str | None
    adjusted: list[str]
    checkpoint: str | None  # None only from a multi-worker worker other than the chief (it keeps nothing)
    metrics: dict[str, float] | None
    served_metrics: dict[str, float] | None
    gate: dict[str, Any] | None
    timings: dict[str, float]
    warmup: str | None = None  # the TF Serving warm-up file written into the export (relative path), if any


@dataclass(frozen=True)
class JobFailed:
    """The job raised; ``error`` is its type and message (the traceback is in the worker's log)."""

    round_id: int | None
    error: str


@dataclass(frozen=True)
class PrewarmJob:
    """Build and trace the model of this pipeline config and class count now, before a round needs it
    (odal.daemon.worker.prewarm); answered by one :class:`Prewarmed`."""

    pipeline_config: Path
    label_map: Path
    num_classes: int
    distribute: Distribute | None = None  # the strategy the rounds will train under (never multi_worker)
    template_dir: Path | None = None  # publish the whole SavedModel here (serving/template.py); None: kept aside


@dataclass(frozen=True)
class Prewarmed:
    """A prewarm finished: ``built`` a new session (False: an untrained one of this model was there), or failed
    with ``error`` (the round then builds what it needs itself)."""

    ok: bool
    seconds: float = 0.0
    built: bool = False
    timings: dict[str, float] | None = None
    error: str | None = None
    template: str | None = None  # the job's template_dir: "published", "unchanged", or why not ("failed: ...")
    undo: dict[str, int] | None = None  # the undone train call: variables it moved, and left moved (always 0)


Message = Union[Ready, Progress, RoundResult, JobFailed, Prewarmed]
_TYPES: dict[str, type] = {"job": RoundJob, "ready": Ready, "progress": Progress, "result": RoundResult,
                           "failed": JobFailed, "prewarm": PrewarmJob, "prewarmed": Prewarmed}
_NAMES = {cls: name for name, cls in _TYPES.items()}
# The nested typed fields, and the fields that are paths.
_NESTED = {(RoundJob, "fine_tune"): FineTune, (RoundJob, "gate"): GateSpec, (RoundJob, "served"): Served,
           (RoundJob, "distribute"): Distribute, (PrewarmJob, "distribute"): Distribute}
_PATHS = {(RoundJob, name) for name in ("round_dir", "pipeline_config", "label_map", "checkpoint_dir", "export_dir",
                                        "tensorboard_dir")} | {(Served, "path")} | {
    (PrewarmJob, "pipeline_config"), (PrewarmJob, "label_map"), (PrewarmJob, "template_dir")}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    return value


def encode(message: RoundJob | Message) -> str:
    """One protocol line (with its newline) for ``message``."""
    return orjson.dumps({"type": _NAMES[type(message)], **_plain(message)}).decode() + "\n"


def _build(cls: type, fields: Any) -> Any:
    if not isinstance(fields, dict):
        raise ProtocolError(f"{cls.__name__}: expected an object, got {type(fields).__name__}")
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in fields.items():
        if value is not None and (cls, name) in _NESTED:
            value = _build(_NESTED[cls, name], value)
        elif value is not None and (cls, name) in _PATHS:
            value = Path(value)
        elif isinstance(value, list) and (cls, name) == (Distribute, "workers"):
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise ProtocolError(f"{cls.__name__}: {error}") from None


def decode(line: str | bytes) -> RoundJob | Message:
    """The message on one protocol line; :class:`ProtocolError` if it is not one."""
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(fields, dict) or fields.get("type") not in _TYPES:
        raise ProtocolError(f"not a message: {str(line)[:200]!r}")
    kind = fields.pop("type")
    return _build(_TYPES[kind], fields)


def round_id_of(line: str | bytes) -> int | None:
    """The ``round_id`` of a line that :func:`decode` refused, if it has one (to echo it in a failure)."""
    try:
        value = orjson.loads(line).get("round_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None
