"""``odal check``: the mistakes that would otherwise show only after a round, one line each with its fix.

Config (loading it checks keys, values, files and the fine-tune checkpoint), paths, the label map against the
pipeline, free disk, the installed unit's sandbox against the paths, the server (reachable, serving the live
version) and the devices the TensorFlow worker would see (asked of a short child process: this process stays
TensorFlow-free).  The daemon logs the fast, local ones (:func:`local`) at start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from odal.common.errors import ConfigError
from odal.daemon import config as config_module
from odal.daemon.commands import check_sandbox
from odal.daemon.config import Config

UNIT_MAX_CHARS = 1 << 20
MIN_FREE_BYTES = 2 << 30  # a round writes TFRecords, checkpoints and an export: a few hundred MB each
_DEVICES = ("import json, tensorflow as tf; "
            "print(json.dumps([d.name.replace('/physical_device:', '') for d in tf.config.list_physical_devices()]))")


@dataclass(frozen=True)
class Finding:
    topic: str
    text: str
    fix: str = ""  # empty: fine

    @property
    def ok(self) -> bool:
        return not self.fix

    def line(self) -> str:
        if self.ok:
            return f"ok       {self.topic}: {self.text}"
        return f"PROBLEM  {self.topic}: {self.text}; fix: {self.fix}"


def local(cfg: Config) -> list[Finding]:
    """The fast checks that need neither the network nor TensorFlow (the daemon runs these at start)."""
    return [*_paths(cfg), *_labels(cfg), *_disk(cfg)]


def _paths(cfg: Config) -> list[Finding]:
    found = []
    if cfg.export_dir is not None and not cfg.export_dir.is_dir():
        found.append(Finding("prodigy.export_dir", f"{cfg.export_dir} does not exist (the daemon would create it "
                             "empty and wait there)", f"mkdir {cfg.export_dir}, or correct the path to where "
                             "`prodigy db-out` writes"))
    for name, path in (("paths.work_dir", cfg.work_dir), ("model.base_path", cfg.base_path)):
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            found.append(Finding(name, f"{path} cannot be written by this user ({existing} is not writable)",
                                 f"give the daemon's user write access to {existing}"))
    if not found:
        found.append(Finding("paths", f"data {cfg.data_dir}, exports {cfg.export_dir or cfg.prodigy_db}, "
                             f"work {cfg.work_dir}, models {cfg.base_path}"))
    return found


def _labels(cfg: Config) -> list[Finding]:
    from odal.daemon.rounds import pipeline_check
    from odal.daemon.sources.label_map import load_label_map

    try:
        labels = load_label_map(cfg.label_map)
    except ConfigError as error:
        return [Finding("label map", str(error), "number the items 1..N, one name each (the daemon would not "
                        "start)")]
    model = pipeline_check.read(cfg.pipeline_config).model
    kind = model.WhichOneof("model")
    declared = getattr(getattr(model, kind), "num_classes", None) if kind else None
    text = f"{len(labels)} classes ({', '.join(labels)})"
    if declared not in (None, 0, len(labels)):
        text += f"; pipeline.config's num_classes {declared} is replaced by the label map's {len(labels)}"
    found = [Finding("label map", text)]
    if cfg.fine_tune_checkpoint:
        found.append(Finding("fine-tune start", f"{cfg.fine_tune_checkpoint} ({cfg.fine_tune_checkpoint_type}, "
                             f"from {cfg.fine_tune.source})"))
    return found


def _disk(cfg: Config) -> list[Finding]:
    found, free_gib = [], []
    for name, path in (("paths.work_dir", cfg.work_dir), ("model.base_path", cfg.base_path)):
        existing = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        free_gib.append(f"{free / 2**30:.1f} GiB free for {name}")
        if free < MIN_FREE_BYTES:
            found.append(Finding("disk", f"{free / 2**30:.1f} GiB free for {name} ({existing})",
                                 f"free at least {MIN_FREE_BYTES >> 30} GiB there (rounds write checkpoints and "
                                 "exports), or lower retention.checkpoints/versions"))
    return found or [Finding("disk", ", ".join(free_gib))]


def _sandbox(cfg: Config, unit: Path) -> list[Finding]:
    try:
        with open(unit, encoding="utf-8", errors="replace") as handle:
            text = handle.read(UNIT_MAX_CHARS)  # a unit file is a few KB
    except OSError:
        return [Finding("service", f"no unit at {unit} (not installed as a service; nothing to check)")]
    found = [Finding("service", problem, fix) for problem, fix in check_sandbox.problems(cfg, text)]
    return found or [Finding("service", f"{unit}: every path is visible and writable where it must be")]


def _server(cfg: Config, live: int | None, timeout: float) -> list[Finding]:
    from odal.serving.client import ServingClient
    from odal.serving.errors import ServingError

    if not cfg.serving_address:
        return [Finding("serving", "serving.address is empty: new versions are not confirmed and the recipe "
                        "shows no boxes", "set serving.address to TF Serving's gRPC HOST:PORT")]
    start = (f"start it: odal serve --port {cfg.serving_address.rpartition(':')[2]} --model_name={cfg.model_name} "
             f"--model_base_path={cfg.base_path} (or TF Serving with the same flags)")
    with ServingClient(cfg.serving_address, timeout=timeout, retries=1) as client:
        try:
            statuses = client.model_status(cfg.model_name)
        except ServingError as error:
            if error.code == "NOT_FOUND" and live is None:
                return [Finding("serving", f"{cfg.serving_address} answers; model {cfg.model_name!r} has no version "
                                "yet (none published)")]
            if error.code == "NOT_FOUND":
                return [Finding("serving", f"{cfg.serving_address} does not serve model {cfg.model_name!r}",
                                f"give the server --model_name={cfg.model_name} "
                                f"--model_base_path={cfg.base_path}")]
            why = "nothing listens there" if error.code == "UNAVAILABLE" else f"{error.code}: {error.message[:200]}"
            return [Finding("serving", f"no answer from {cfg.serving_address} ({why})", start)]
    available = sorted(s.version for s in statuses if s.state == "AVAILABLE")
    if live is not None and live not in available:
        return [Finding("serving", f"{cfg.serving_address} serves {cfg.model_name!r} versions {available or 'none'}, "
                        f"not version {live}, the newest published in {cfg.base_path}",
                        f"point the server's --model_base_path at {cfg.base_path}")]
    return [Finding("serving", f"{cfg.serving_address} serves {cfg.model_name!r} version(s) {available or '-'}")]


def devices(timeout: float = 180.0) -> Finding:
    """The devices TensorFlow sees in a child started like the worker (same interpreter and environment)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _DEVICES], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return Finding("devices", f"TensorFlow did not start within {timeout:g} s", "check the venv's TensorFlow")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return Finding("devices", f"TensorFlow does not start for the worker: {last}",
                       "reinstall the pinned stack: make install")
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    gpus = [n for n in names if "GPU" in n]
    return Finding("devices", ", ".join(names) + ("" if gpus else " (no GPU: training runs on the CPU)"))


def run(config_path: Path, unit: Path = check_sandbox.DEFAULT_UNIT, with_devices: bool = True,
        timeout: float = 5.0, out: TextIO | None = None) -> int:
    """Print one line per check (problems with their fix); 1 when anything is wrong, else 0."""
    from odal.daemon.commands.status import status_data

    out = out or sys.stdout
    print(f"odal check {config_path}", file=out)
    try:
        cfg = config_module.load(config_path)
    except ConfigError as error:
        print(Finding("config", str(error), "correct that setting (see README.md for every key)").line(), file=out)
        return 1
    found = [Finding("config", "valid"), *local(cfg), *_sandbox(cfg, unit)]
    found += _server(cfg, status_data(config_path).get("live_version"), timeout)
    if with_devices:
        found.append(devices())
    for finding in found:
        print(finding.line(), file=out)
    bad = sum(not f.ok for f in found)
    print(f"{bad} problem(s)" if bad else "everything looks right", file=out)
    return 1 if bad else 0
