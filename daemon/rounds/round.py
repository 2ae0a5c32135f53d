"""Run one training round: snapshot the ledger, hand the typed job to the worker child
(odal.daemon.rounds.worker_client), publish what it exported.  The daemon process never imports TensorFlow."""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TYPE_CHECKING

from odal.daemon.rounds import gate as gates
from odal.daemon.system import log as logs
from odal.daemon.system.atomic import remove_tree
from odal.common.errors import PublishError
from odal.daemon.rounds import distributed, publish
from odal.daemon.rounds.contracts import FineTune, GateSpec, RoundJob, Served
from odal.daemon.rounds.inputs import image_roots, round_inputs, with_images, write_splits
from odal.daemon.rounds.progress import RoundProgress
from odal.daemon.rounds.worker_client import Abandoned, Worker
from odal.daemon.store.history import History

if TYPE_CHECKING:  # the configuration imports the rounds' gate and pipeline check
    from odal.daemon.config import Config

log = logs.get("odal.round")


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
              status: Callable[..., None] = lambda text, detail=None: None, confirm=None) -> RoundOutcome:
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
            fine_tune = FineTune(cfg.fine_tune_checkpoint, cfg.fine_tune_checkpoint_type)
        staging = publish.staging_dir(cfg.base_path, round_id)
        cfg.base_path.mkdir(parents=True, exist_ok=True)
        job = RoundJob(
            round_id=round_id, round_dir=round_dir, pipeline_config=cfg.pipeline_config, label_map=cfg.label_map,
            num_classes=len(labels), steps=cfg.steps_per_round,
            init_checkpoint=previous[1] if previous else None, fine_tune=fine_tune,
            checkpoint_dir=cfg.work_dir / "checkpoints" / f"round-{round_id}",
            export_dir=staging, tensorboard_dir=cfg.work_dir / "tensorboard",
            gate=GateSpec(cfg.gate_metric, cfg.gate_tolerance), served=_served(cfg),
            distribute=distributed.spec(cfg),
        )

        if cfg.strategy == "multi_worker":  # the other workers (odal train-worker) run the same job in step
            distributed.announce(cfg, job)
        try:
            result = worker.run(job, RoundProgress(round_id, cfg.steps_per_round, bound, status))
        finally:
            distributed.withdraw(cfg)
        metrics = gates.summarize(result.metrics)
        timings = dict(result.timings)
        gate = dict(result.gate, served_metrics=gates.summarize(result.served_metrics),
                    eval_images=counts["eval"], **eval_info)
        history.update_round(round_id, checkpoint=result.checkpoint, global_step=result.train["global_step"],
                             metrics=metrics, timings=timings, gate=gate)
        bound.info("round_trained", global_step=result.train["global_step"], loss=result.train["loss"],
                   train_cpu_seconds=result.train.get("cpu_seconds"),
                   session_reused=result.session_reused, export=result.export, metrics=metrics,
                   timings=timings, learning_rate=result.train.get("learning_rate"),
                   fine_tune=result.train.get("fine_tune"), frozen=result.train.get("frozen"),
                   adjusted=result.adjusted,
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
        history.record_version(version, round_id, path, metrics, "published")
        timings["publish"] = time.monotonic() - publish_started
        if confirm is not None:
            status(f"round {round_id}: confirming version {version}")
            confirm_started = time.monotonic()
            sample = next((a["image_path"] for a in accepted if a.get("image_path")), None)
            failed = confirm(version, sample)
            if failed is not None:  # it does not serve: out of the numbered namespace, the previous one serves on
                where = publish.quarantine(cfg.base_path, version)
                history.set_version_state(version, "quarantined", failed, path=where)
                log.error("version_quarantined", version=version, reason=failed, moved_to=str(where),
                          seconds=round(time.monotonic() - confirm_started, 2))
                raise PublishError(f"version {version} did not serve ({failed}); quarantined at {where}")
            history.set_version_state(version, "confirmed")
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


def _served(cfg: Config) -> Served | None:
    """The version TF Serving serves now: the newest numbered folder in the base path (a rolled-back or
    quarantined version is no longer there); None when there is none."""
    versions = publish.version_dirs(cfg.base_path)
    if not versions:
        return None
    version = max(versions)
    return Served(version, versions[version])


def _retain(cfg: Config, history: History) -> None:
    """Keep the newest K versions, checkpoints and round folders (TFRecords); delete older ones."""
    for version in publish.prune_versions(cfg.base_path, cfg.keep_versions):
        history.set_version_state(version, "deleted", "retention")
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
