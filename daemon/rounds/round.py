"""Run one training round: snapshot the ledger, hand the job to the worker child, publish what it exported.

The daemon process never imports TensorFlow.  :class:`Worker` owns one long-lived child process
(``python -m odal.daemon.worker``) that keeps TF and the traced model between rounds; if it dies, the round fails
cleanly and the next round starts a new child.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from odal.daemon.rounds import gate as gates
from odal.daemon.system import log as logs
from odal.daemon.system.atomic import remove_tree
from odal.daemon.config import Config
from odal.common.errors import RoundFailed
from odal.daemon.rounds import distributed, publish
from odal.daemon.rounds.inputs import image_roots, round_inputs, with_images, write_splits
from odal.daemon.rounds.inputs import split_of, write_annotations  # noqa: F401 - their old home
from odal.daemon.store.history import History

log = logs.get("odal.round")


class Abandoned(Exception):
    """The round was stopped on purpose (daemon shutting down)."""


class Worker:
    """The TensorFlow child process: started on first use, reused across rounds, stopped politely.

    A child whose memory (RSS) after a round is above ``max_rss`` bytes is retired and the next round starts a
    fresh one: whatever TensorFlow keeps from round to round (a few MiB; see bench/results/worker_memory.md) cannot
    add up over weeks.  The fresh child pays the first-round costs (tracing, a whole SavedModel) once.
    """

    def __init__(self, log_path: Path, max_bytes: int = 0, backups: int = 3, max_rss: int = 0,
                 one_round: bool = False):
        self._log_path = log_path
        self._one_round = one_round  # a child per round (multi-worker: each round forms its collective group)
        self._spec = None  # the tf.distribute spec the child was started for (a child keeps its strategy)
        self._log_rotation = (max_bytes, backups)  # its stderr log is rotated when a child starts, if too big
        self._max_rss = max_rss
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = False  # set by stop(): a child ending now was stopped on purpose
        self._stopped = threading.Event()

    @classmethod
    def for_config(cls, cfg: Config) -> "Worker":
        return cls(cfg.work_dir / "logs" / "worker.log", cfg.log_max_bytes, cfg.log_backups, cfg.worker_max_bytes,
                   one_round=cfg.strategy == "multi_worker")

    @property
    def stopping(self) -> bool:
        """stop() was called: the daemon is shutting down."""
        return self._stopping

    def wait_stopping(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if stop() is called meanwhile."""
        self._stopped.wait(seconds)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        max_bytes, backups = self._log_rotation
        if max_bytes and self._log_path.exists() and self._log_path.stat().st_size > max_bytes:
            logs.rotate(self._log_path, backups)
        stderr = open(self._log_path, "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "odal.daemon.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=env, text=True, bufsize=1, start_new_session=True,
        )
        stderr.close()
        ready = proc.stdout.readline()
        if '"ready"' not in ready:
            proc.kill()
            proc.wait()
            raise RoundFailed(f"the worker did not start; see {self._log_path}")
        log.info("worker_started", pid=proc.pid)
        return proc

    def run(self, job: dict, on_progress: Callable[[dict], None]) -> dict:
        """Send one job; relay progress; return the result (raises RoundFailed / Abandoned)."""
        with self._lock:
            if self._stopping:
                raise Abandoned("worker stopping")
            if self._proc is not None and self._proc.poll() is None and job.get("distribute") != self._spec:
                self._retire(self._proc, reason="training.strategy changed")
            if self._proc is None or self._proc.poll() is not None:
                self._proc, self._spec = self._start(), job.get("distribute")
            proc = self._proc
        if self._stopping:  # stop() ran while the child was starting: it never saw it
            self.stop()
            raise Abandoned("worker stopped")
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone; its exit status (below) says why
        for line in proc.stdout:
            message = json.loads(line)
            if message["type"] == "progress":
                on_progress(message)
            elif message["type"] == "result":
                if not message["ok"]:
                    raise RoundFailed(message["error"])
                self._retire_if_grown(proc)
                return message
        code = proc.wait()
        self._proc = None
        if code in (-signal.SIGTERM, -signal.SIGKILL) and self._stopping:
            raise Abandoned("worker stopped")
        raise RoundFailed(f"the worker exited with {code} during the round; see {self._log_path}")

    def _retire_if_grown(self, proc: subprocess.Popen) -> None:
        rss = rss_bytes(proc.pid)
        if self._one_round:
            with self._lock:
                self._retire(proc, reason="one round per child (multi_worker)", rss_mb=round((rss or 0) / (1 << 20)))
        elif self._max_rss and rss is not None and rss > self._max_rss:
            with self._lock:
                self._retire(proc, reason="grown", rss_mb=round(rss / (1 << 20)), max_mb=round(self._max_rss / (1 << 20)))

    def _retire(self, proc: subprocess.Popen, **why) -> None:
        """End the child politely (it exits at the end of its input); the next round starts a new one."""
        self._proc = None
        proc.stdin.close()  # the child ends at the end of its input
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.info("worker_retired", pid=proc.pid, **why)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child's session, SIGKILL after ``timeout``."""
        self._stopping = True
        self._stopped.set()
        with self._lock:  # waits for a child being started (run() then sees _stopping and stops it)
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.close()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except (ProcessLookupError, BrokenPipeError, OSError):
            pass
        log.info("worker_stopped", pid=proc.pid)


def rss_bytes(pid: int) -> int | None:
    """The resident memory of process ``pid`` (``VmRSS`` in /proc), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class RoundOutcome:
    round_id: int
    state: str
    version: int | None = None
    metrics: dict | None = None
    timings: dict | None = None
    error: str | None = None
    gate: dict | None = None


def run_round(cfg: Config, history: History, accepted: list[dict], seq: int, labels: list[str], worker: Worker,
              status: Callable[[str], None] = lambda text: None, confirm=None) -> RoundOutcome:
    """One round from the ledger snapshot ``accepted`` (taken at change counter ``seq``) to a published version."""
    round_id = history.start_round(seq)
    bound = log.bind(round=round_id)
    round_dir = cfg.work_dir / "rounds" / str(round_id)
    round_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        accepted, missing = with_images(accepted, image_roots(cfg))
        if missing:  # deleted (or moved) since they were annotated: trained on again once the file is back
            bound.warning("images_missing", count=len(missing), images=missing[:10])
        pairs, eval_info = round_inputs(cfg, accepted, labels, bound)
        counts = write_splits(round_dir / "annotations.jsonl", pairs, labels)
        history.update_round(round_id, accepted=len(accepted), n_train=counts["train"], n_eval=counts["eval"],
                             steps=cfg.steps_per_round)
        if counts["train"] == 0:
            history.finish_round(round_id, "skipped", error="no training images")
            bound.warning("round_skipped", reason="no training images", accepted=len(accepted))
            return RoundOutcome(round_id, "skipped", error="no training images")
        bound.info("round_started", accepted=len(accepted), train=counts["train"], eval=counts["eval"],
                   steps=cfg.steps_per_round)

        previous = next(((rid, ckpt) for rid, ckpt in history.checkpoints() if Path(ckpt + ".index").is_file()), None)
        fine_tune = None
        if previous is None and cfg.fine_tune_checkpoint:
            fine_tune = {"path": cfg.fine_tune_checkpoint, "type": cfg.fine_tune_checkpoint_type}
        staging = publish.staging_dir(cfg.base_path, round_id)
        cfg.base_path.mkdir(parents=True, exist_ok=True)
        job = {
            "round_dir": str(round_dir), "pipeline_config": str(cfg.pipeline_config), "label_map": str(cfg.label_map),
            "num_classes": len(labels), "steps": cfg.steps_per_round,
            "init_checkpoint": previous[1] if previous else None, "fine_tune": fine_tune,
            "checkpoint_dir": str(cfg.work_dir / "checkpoints" / f"round-{round_id}"),
            "export_dir": str(staging), "tensorboard_dir": str(cfg.work_dir / "tensorboard"),
            "gate": {"metric": cfg.gate_metric, "tolerance": cfg.gate_tolerance}, "served": _served(cfg),
            "distribute": distributed.spec(cfg),
        }

        def on_progress(message: dict) -> None:
            if "step" in message:
                status(f"round {round_id}: training {message['step']}/{message['of']}")
                bound.debug("train_progress", step=message["step"], of=message["of"], loss=message["loss"])
            else:
                status(f"round {round_id}: {message['stage']}")
                bound.info("stage_started", stage=message["stage"])

        if cfg.strategy == "multi_worker":  # the other workers (odal train-worker) run the same job in step
            distributed.announce(cfg, job)
        try:
            result = worker.run(job, on_progress)
        finally:
            distributed.withdraw(cfg)
        metrics = gates.summarize(result["metrics"])
        timings = dict(result["timings"])
        gate = dict(result["gate"], served_metrics=gates.summarize(result["served_metrics"]),
                    eval_images=counts["eval"], **eval_info)
        history.update_round(round_id, checkpoint=result["checkpoint"], global_step=result["train"]["global_step"],
                             metrics=metrics, timings=timings, gate=gate)
        bound.info("round_trained", global_step=result["train"]["global_step"], loss=result["train"]["loss"],
                   session_reused=result["session_reused"], export=result["export"], metrics=metrics,
                   timings=timings, learning_rate=result["train"].get("learning_rate"),
                   fine_tune=result["train"].get("fine_tune"), adjusted=result.get("adjusted"),
                   gate=gate["reason"])
        if not gate["passed"]:  # not blessed: an outcome, not an error; the next round trains on from this one
            remove_tree(staging)
            timings["total"] = time.monotonic() - started
            history.finish_round(round_id, "held_back", timings=timings)
            bound.info("round_held_back", metric=gate["metric"], candidate=gate["candidate"], served=gate["served"],
                       served_version=gate["served_version"], tolerance=gate["tolerance"],
                       seconds=round(timings["total"], 2))
            _retain(cfg, history)
            return RoundOutcome(round_id, "held_back", None, metrics, timings, gate=gate)

        status(f"round {round_id}: publishing")
        publish_started = time.monotonic()
        version, path = publish.publish(staging, cfg.base_path, history, round_id, metrics)
        timings["publish"] = time.monotonic() - publish_started
        if confirm is not None:
            status(f"round {round_id}: confirming version {version}")
            confirm_started = time.monotonic()
            sample = next((a["image_path"] for a in accepted if a.get("image_path")), None)
            confirm(version, path, history, sample)
            timings["confirm"] = time.monotonic() - confirm_started
        else:
            history.set_version_state(version, "unconfirmed", "no serving.address configured")
            bound.info("version_unconfirmed", version=version, reason="no serving.address configured")
        timings["total"] = time.monotonic() - started
        history.finish_round(round_id, "published", version=version, timings=timings)
        bound.info("round_published", version=version, seconds=round(timings["total"], 2), metrics=metrics)
        _retain(cfg, history)
        return RoundOutcome(round_id, "published", version, metrics, timings, gate=gate)
    except Abandoned:
        history.finish_round(round_id, "abandoned", error="daemon stopping")
        bound.warning("round_abandoned")
        raise
    except Exception as error:  # noqa: BLE001 - a failed round is recorded; the previous version keeps serving
        message = f"{type(error).__name__}: {error}"
        bound.error("round_failed", error=message)
        # Its partial outputs go first: on a full disk that is what frees the room to record the failure.
        partials = (publish.staging_dir(cfg.base_path, round_id), cfg.work_dir / "checkpoints" / f"round-{round_id}")
        for partial in partials:
            try:
                remove_tree(partial)
            except OSError as cleanup_error:
                bound.warning("round_cleanup_failed", path=str(partial), error=str(cleanup_error))
        _record_failure(history, round_id, message, worker, status)
        return RoundOutcome(round_id, "failed", error=message)


def _record_failure(history: History, round_id: int, message: str, worker: Worker,
                    status: Callable[[str], None], max_wait: float = 60.0) -> None:
    """``finish_round(failed)``, retried with backoff while the ledger cannot be written (a full disk): a round
    must never stay ``running`` with its error lost.  Gives up only when the daemon stops (the round is then
    abandoned at the next start)."""
    wait = 1.0
    while True:
        try:
            history.finish_round(round_id, "failed", error=message)
            return
        except sqlite3.Error as error:
            if worker.stopping:
                log.error("round_failure_unrecorded", round=round_id, error=message, cause=str(error))
                raise Abandoned("daemon stopping") from error
            status(f"degraded: round {round_id} failed and its failure cannot be recorded ({error}); "
                   f"retrying in {wait:g} s")
            log.error("round_failure_not_recorded", round=round_id, error=message, cause=str(error),
                      retry_in=wait)
            worker.wait_stopping(wait)
            wait = min(wait * 2, max_wait)


def _served(cfg: Config) -> dict | None:
    """The version TF Serving serves now: the newest numbered folder in the base path (a rolled-back or
    quarantined version is no longer there); None when there is none."""
    versions = publish.version_dirs(cfg.base_path)
    if not versions:
        return None
    version = max(versions)
    return {"version": version, "path": str(versions[version])}


def _retain(cfg: Config, history: History) -> None:
    """Keep the newest K versions, checkpoints and round folders (TFRecords); delete older ones."""
    publish.prune_versions(cfg.base_path, history, cfg.keep_versions)
    keep = {Path(ckpt).parent for _, ckpt in history.checkpoints()[: cfg.keep_checkpoints]}
    for folder in sorted((cfg.work_dir / "checkpoints").glob("round-*")):
        if folder not in keep:
            remove_tree(folder)
    rounds = sorted((p for p in (cfg.work_dir / "rounds").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for folder in rounds[: -cfg.keep_checkpoints]:
        remove_tree(folder)
    # What killed rounds left: half-saved checkpoints and half-deleted folders (no round runs now).
    for leftover in [*(cfg.work_dir / "checkpoints").glob(".*.partial"), *(cfg.work_dir / "checkpoints").glob(
            ".deleting-*"), *(cfg.work_dir / "rounds").glob(".deleting-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
