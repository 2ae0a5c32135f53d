"""A workspace's configuration: one TOML file, validated once at start.

Relative paths are relative to the folder of the TOML file.  Every problem is reported as one
:class:`~odal.common.errors.ConfigError` that names the key (``training.steps_per_round: must be >= 1``).
The pipeline.config it names is read too (:mod:`odal.daemon.rounds.pipeline_check`): its fine-tune checkpoint and the
settings odal cannot feed are checked here, once.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odal.daemon.rounds import pipeline_check
from odal.common.address import parse_address
from odal.common.errors import ConfigError
from odal.daemon.rounds.gate import METRICS
from odal.daemon.store.db import LEDGER_FILE
from odal.daemon.store.queue_order import DEFAULT_BATCH, QUEUE_STRATEGIES

STRATEGIES = ("default", "mirrored", "multi_worker")

# section -> key -> (type, default); a default of ... means required.
_SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "prodigy": {
        "export_dir": (str, ""),
        "database": (str, ""),
        "dataset": (str, ""),
    },
    "paths": {
        "data_dir": (str, ...),
        "work_dir": (str, "work"),
    },
    "model": {
        "name": (str, "odal"),
        "pipeline_config": (str, ...),
        "label_map": (str, ...),
        "base_path": (str, ...),
        "fine_tune_checkpoint": (str, ""),  # overrides pipeline.config's train_config.fine_tune_checkpoint
        "fine_tune_checkpoint_type": (str, ""),  # overrides pipeline.config's; "" = pipeline.config's
    },
    "training": {
        "steps_per_round": (int, 200),
        "min_new_annotations": (int, 10),
        "debounce_seconds": (float, 5.0),
        "eval_fraction": (float, 0.2),
        "worker_max_mb": (float, 4096.0),  # restart the TensorFlow worker between rounds beyond this RSS; 0 = never
        "strategy": (str, "default"),  # tf.distribute: default | mirrored | multi_worker (odal.daemon.worker.distribute)
        "cpu_devices": (int, 0),  # mirrored over this many logical CPU devices instead of the GPUs (0 = GPUs)
        "workers": (list, []),  # multi_worker: every worker's "host:port", the chief (this daemon) first
        "index": (int, 0),  # multi_worker: this host's place in workers (0 = the chief, which runs odal-daemon)
        "prewarm": (bool, True),  # start the worker and trace the model while waiting for annotations
    },
    "retention": {
        "versions": (int, 3),
        "checkpoints": (int, 3),
    },
    "serving": {
        "address": (str, ""),
        "confirm_timeout_seconds": (float, 120.0),
    },
    "log": {
        "file": (str, ""),
        "level": (str, "info"),
        "max_mb": (float, 64.0),  # the log file (and the worker's) is rotated beyond this size; 0 = never
        "backups": (int, 3),  # rotated files kept: daemon.jsonl.1 .. .N
    },
    "metrics": {
        "address": (str, ""),  # Prometheus endpoint, e.g. "127.0.0.1:9464"; empty = off
    },
    "limits": {  # what the daemon reads from the data dir (odal.daemon.sources.limits)
        "image_max_mb": (float, 64.0),  # bigger image files are refused unread
        "image_max_megapixels": (float, 50.0),  # checked in the header, before decoding
        "image_settle_seconds": (float, 5.0),  # a broken image unchanged this long is complete, not being copied
    },
    "gate": {  # odal.daemon.rounds.gate: publish a round's model only if it is not worse than the served version
        "metric": (str, "mAP@0.5"),
        "tolerance": (float, 0.0),  # held back when candidate < served - tolerance
        "eval_export": (str, ""),  # a db-out file of annotations only ever evaluated on, never trained on ...
        "eval_dataset": (str, ""),  # ... or a dataset of [prodigy] database
    },
    "queue": {  # the order the recipe shows unannotated images in (odal.daemon.store.queue_order)
        "strategy": (str, "diverse"),  # diverse (odal simulate measured it best), uncertainty or random
        "batch": (int, DEFAULT_BATCH),  # diverse: how many images are chosen together (then the rest by score)
    },
}


@dataclass(frozen=True)
class Config:
    path: Path
    export_dir: Path | None
    prodigy_db: Path | None
    prodigy_dataset: str
    data_dir: Path
    work_dir: Path
    model_name: str
    pipeline_config: Path
    label_map: Path
    base_path: Path
    fine_tune_checkpoint: str  # absolute checkpoint prefix the first round starts from, "" = none
    fine_tune_checkpoint_type: str
    steps_per_round: int
    min_new_annotations: int
    debounce_seconds: float
    eval_fraction: float
    keep_versions: int
    keep_checkpoints: int
    serving_address: str
    confirm_timeout_seconds: float
    log_file: Path | None
    log_level: str
    worker_max_bytes: int = 4096 << 20
    strategy: str = "default"
    cpu_devices: int = 0
    workers: tuple[str, ...] = ()
    worker_index: int = 0
    prewarm: bool = True
    log_max_bytes: int = 64 << 20
    log_backups: int = 3
    metrics_address: str = ""
    image_max_bytes: int = 64 << 20
    image_max_pixels: int = 50_000_000
    image_settle_seconds: float = 5.0
    fine_tune: pipeline_check.FineTune = pipeline_check.FineTune()  # where fine_tune_checkpoint came from
    gate_metric: str = "mAP@0.5"
    gate_tolerance: float = 0.0
    eval_export: Path | None = None
    scoring_side: int | None = None  # the model's input side (pipeline.config image_resizer): images scored at it
    eval_dataset: str = ""
    queue_strategy: str = "diverse"
    queue_batch: int = DEFAULT_BATCH

    @property
    def ledger_path(self) -> Path:
        return self.work_dir / LEDGER_FILE

    @property
    def limits(self):
        from odal.daemon.sources.limits import Limits

        return Limits(self.image_max_bytes, self.image_max_pixels, self.image_settle_seconds)


def _typed(section: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise ConfigError(f"{section}.{key}: expected a list of strings, got {value!r}")
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{section}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def parse(data: dict, path: Path) -> Config:
    """Validate the TOML ``data`` of the file at ``path``."""
    values: dict[tuple[str, str], Any] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(_SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: must be a table")
        for key in body:
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(_SCHEMA[section])})")
    for section, keys in _SCHEMA.items():
        for key, (kind, default) in keys.items():
            if key in data.get(section, {}):
                values[section, key] = _typed(section, key, data[section][key], kind)
                if (section, key) == ("log", "level"):  # INFO, Info and info alike
                    values[section, key] = values[section, key].lower()
            elif default is ...:
                raise ConfigError(f"{section}.{key}: required")
            else:
                values[section, key] = default

    base = path.parent

    def resolve(section: str, key: str, must_exist: str | None = None) -> Path | None:
        raw = values[section, key]
        if not raw:
            return None
        resolved = (base / Path(raw).expanduser()).resolve()
        if must_exist == "file" and not resolved.is_file():
            raise ConfigError(f"{section}.{key}: no such file: {resolved}")
        if must_exist == "dir" and not resolved.is_dir():
            raise ConfigError(f"{section}.{key}: no such directory: {resolved}")
        return resolved

    export_dir = resolve("prodigy", "export_dir")
    prodigy_db = resolve("prodigy", "database", "file")
    if export_dir is None and prodigy_db is None:
        raise ConfigError("prodigy: set export_dir (db-out JSONL files) or database (Prodigy's SQLite file)")
    if prodigy_db is not None and not values["prodigy", "dataset"]:
        raise ConfigError("prodigy.dataset: required with prodigy.database (the dataset to read)")
    checks = [
        ("training", "steps_per_round", lambda v: v >= 1, "must be >= 1"),
        ("training", "min_new_annotations", lambda v: v >= 1, "must be >= 1"),
        ("training", "debounce_seconds", lambda v: v >= 0, "must be >= 0"),
        ("training", "eval_fraction", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ("training", "worker_max_mb", lambda v: v >= 0, "must be >= 0 (0: never restart the worker)"),
        ("training", "strategy", lambda v: v in STRATEGIES, ", ".join(STRATEGIES)),
        ("training", "cpu_devices", lambda v: 0 <= v <= 64, "must be in 0..64 (0: the GPUs)"),
        ("training", "workers", lambda v: all(_is_host_port(w) for w in v), "each HOST:PORT"),
        ("training", "index", lambda v: 0 <= v < max(1, len(values["training", "workers"])),
         "must be a place in training.workers (0 = the chief)"),
        ("retention", "versions", lambda v: v >= 1, "must be >= 1"),
        ("retention", "checkpoints", lambda v: v >= 1, "must be >= 1"),
        ("serving", "confirm_timeout_seconds", lambda v: v > 0, "must be > 0"),
        ("model", "name", lambda v: v.replace("_", "").replace("-", "").isalnum(), "letters, digits, - and _"),
        ("model", "fine_tune_checkpoint_type", lambda v: v in ("", "detection", "classification", "full",
                                                                "fine_tune"),
         "detection, classification, full or fine_tune"),
        ("log", "level", lambda v: v in ("debug", "info", "warning", "error"), "debug, info, warning or error"),
        ("gate", "metric", lambda v: v in METRICS, ", ".join(METRICS)),
        ("gate", "tolerance", lambda v: -1 <= v <= 1, "must be in [-1, 1] (1: publish every round)"),
        ("log", "max_mb", lambda v: v >= 0, "must be >= 0 (0: never rotate)"),
        ("log", "backups", lambda v: 0 <= v <= 100, "must be in 0..100"),
        ("limits", "image_max_mb", lambda v: 0 < v <= 4096, "must be in (0, 4096]"),
        ("limits", "image_max_megapixels", lambda v: 0 < v <= 178, "must be in (0, 178] (Pillow refuses more)"),
        ("limits", "image_settle_seconds", lambda v: 0 <= v <= 3600, "must be in [0, 3600]"),
        ("queue", "strategy", lambda v: v in QUEUE_STRATEGIES, ", ".join(QUEUE_STRATEGIES)),
        ("queue", "batch", lambda v: 1 <= v <= 10_000, "must be in 1..10000"),
    ]
    for section, key, ok, message in checks:
        if not ok(values[section, key]):
            raise ConfigError(f"{section}.{key}: {message}, got {values[section, key]!r}")
    if values["training", "strategy"] == "multi_worker" and len(values["training", "workers"]) < 2:
        raise ConfigError("training.workers: multi_worker needs at least two HOST:PORT, the chief's first")
    eval_export = _eval_source(values, resolve("gate", "eval_export", "file"), export_dir, prodigy_db)
    metrics_address = values["metrics", "address"]
    _host_port("metrics.address", metrics_address, "127.0.0.1:9464")
    _host_port("serving.address", values["serving", "address"], "127.0.0.1:8500")

    pipeline_config = resolve("model", "pipeline_config", "file")
    pipeline = pipeline_check.read(pipeline_config)
    pipeline_check.unsupported(pipeline, pipeline_config)
    pipeline_check.trainable_patterns(pipeline, pipeline_config)
    fine_tune = pipeline_check.fine_tune(pipeline, pipeline_config, values["model", "fine_tune_checkpoint"],
                                         values["model", "fine_tune_checkpoint_type"], base)

    return Config(
        path=path,
        export_dir=export_dir,
        prodigy_db=prodigy_db,
        prodigy_dataset=values["prodigy", "dataset"],
        data_dir=resolve("paths", "data_dir", "dir"),
        work_dir=resolve("paths", "work_dir"),
        model_name=values["model", "name"],
        pipeline_config=pipeline_config,
        label_map=resolve("model", "label_map", "file"),
        base_path=resolve("model", "base_path"),
        fine_tune_checkpoint=fine_tune.checkpoint,
        fine_tune_checkpoint_type=fine_tune.type,
        steps_per_round=values["training", "steps_per_round"],
        min_new_annotations=values["training", "min_new_annotations"],
        debounce_seconds=values["training", "debounce_seconds"],
        eval_fraction=values["training", "eval_fraction"],
        keep_versions=values["retention", "versions"],
        keep_checkpoints=values["retention", "checkpoints"],
        serving_address=values["serving", "address"],
        confirm_timeout_seconds=values["serving", "confirm_timeout_seconds"],
        log_file=resolve("log", "file"),
        log_level=values["log", "level"],
        worker_max_bytes=int(values["training", "worker_max_mb"] * (1 << 20)),
        strategy=values["training", "strategy"],
        cpu_devices=values["training", "cpu_devices"],
        workers=tuple(values["training", "workers"]),
        worker_index=values["training", "index"],
        prewarm=values["training", "prewarm"],
        log_max_bytes=int(values["log", "max_mb"] * (1 << 20)),
        log_backups=values["log", "backups"],
        metrics_address=metrics_address,
        image_max_bytes=int(values["limits", "image_max_mb"] * (1 << 20)),
        image_max_pixels=int(values["limits", "image_max_megapixels"] * 1_000_000),
        image_settle_seconds=values["limits", "image_settle_seconds"],
        fine_tune=fine_tune,
        gate_metric=values["gate", "metric"],
        gate_tolerance=values["gate", "tolerance"],
        eval_export=eval_export,
        eval_dataset=values["gate", "eval_dataset"],
        queue_strategy=values["queue", "strategy"],
        queue_batch=values["queue", "batch"],
        scoring_side=pipeline_check.input_side(pipeline),
    )


def _host_port(key: str, address: str, example: str) -> None:
    """An address is empty (off) or HOST:PORT: a bare host would make every later connection fail."""
    try:
        parse_address(address)
    except ValueError:
        raise ConfigError(f"{key}: HOST:PORT (e.g. {example}), got {address!r}") from None


def _is_host_port(address: str) -> bool:
    try:
        return parse_address(address) is not None
    except ValueError:
        return False


def _eval_source(values: dict, eval_export: Path | None, export_dir: Path | None, prodigy_db: Path | None):
    """The fixed eval set must never be read as training data: not a file the export watcher reads, not the
    training dataset."""
    dataset = values["gate", "eval_dataset"]
    if eval_export is not None and dataset:
        raise ConfigError("gate: set eval_export or eval_dataset, not both")
    if eval_export is not None and export_dir is not None and eval_export.parent == export_dir:
        raise ConfigError(f"gate.eval_export: {eval_export} is in prodigy.export_dir, whose files are trained on; "
                          "keep the eval set in another folder")
    if dataset and prodigy_db is None:
        raise ConfigError("gate.eval_dataset: needs prodigy.database (the Prodigy database that holds it)")
    if dataset and dataset == values["prodigy", "dataset"]:
        raise ConfigError(f"gate.eval_dataset: {dataset!r} is the training dataset (prodigy.dataset); "
                          "name the dataset of the held-out annotations")
    return eval_export


def load(path: str | Path) -> Config:
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    try:
        return parse(data, path)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def workspace_config(workspace: str | Path) -> Path:
    """The config file of a workspace folder (``odal.toml``)."""
    return Path(workspace).expanduser().resolve() / "odal.toml"
