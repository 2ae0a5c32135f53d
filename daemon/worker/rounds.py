"""One round job, inside the worker: records -> train -> evaluate -> export, each stage timed.

The job (odal.daemon.rounds.contracts.RoundJob) names every input and output path.  With a gate, the served
version is evaluated on the same eval data as the candidate; a candidate the gate holds back is not exported (the
result's ``gate`` says why, ``export`` is None).

A multi-worker job (``job.distribute``) at a worker other than the chief (index 0) only trains, in step with the
chief: its records go to its own folder (``round_dir/worker-N``), its checkpoint to a temporary folder that is
deleted (every worker saves, as the OD API's train loop has them do, but only the chief's is kept), and it neither
evaluates nor exports.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)
from odal.daemon.rounds import gate as gates
from odal.daemon.rounds.contracts import Progress, RoundJob, RoundResult
from odal.daemon.system.atomic import publish_dir, remove_tree
from odal.daemon.worker import distribute
from odal.daemon.worker import session as sessions
from odal.daemon.worker import warmup_request
from odal.daemon.worker import eval_cache
from odal.daemon.worker.served import evaluate_served, remember_export
from odal.daemon.worker.tfrecords import write_records

_SESSION: sessions.ModelSession | None = None
_AFTER_REPLY: list[Callable[[], None]] = []  # what the last job left for after its answer (TensorBoard images)


def after_reply() -> None:
    """Do what the last job left for after its answer was sent: draw the evaluations' TensorBoard images.  A
    failure is printed (the worker's log) and loses only those images."""
    while _AFTER_REPLY:
        work = _AFTER_REPLY.pop(0)
        try:
            work()
        except Exception:  # noqa: BLE001 - TensorBoard images only; the rounds go on
            traceback.print_exc()


def session_for(configs: dict, init_checkpoint: str | None) -> tuple[sessions.ModelSession, bool]:
    """The cached session when the model is unchanged, else a new one; and whether it was reused.

    A job with no checkpoint to continue (first round, or every checkpoint deleted) starts from fresh weights, so
    a session that has already trained is not reused for it.
    """
    global _SESSION
    key = sessions.session_key(configs)
    if _SESSION is not None and _SESSION.key == key and (init_checkpoint is not None or not _SESSION.trained):
        return _SESSION, True
    _SESSION = sessions.ModelSession(configs, distribute.current())
    return _SESSION, False


def prewarmed_session(configs: dict, build: Callable[[sessions.ModelSession], None]) -> bool:
    """Make a session for ``configs`` and ``build`` it (trace, save) before any round needs it; it becomes the
    cached session only once built.  False when an untrained session of this model is already there."""
    global _SESSION
    if _SESSION is not None and _SESSION.key == sessions.session_key(configs) and not _SESSION.trained:
        return False
    session = sessions.ModelSession(configs, distribute.current())
    build(session)
    _SESSION = session
    return True


def _fresh(path: Path) -> Path:
    """A path for an output folder, cleared of what a crashed attempt may have left."""
    remove_tree(path)
    return path


def run_job(job: RoundJob, send: Callable[[Progress], None]) -> RoundResult:
    """Run ``job``; what can wait for its answer is left in ``_AFTER_REPLY`` (:func:`after_reply`)."""
    after_reply()  # an in-process caller that did not call it: before this job changes the model
    dist = distribute.configure(job.distribute)
    round_dir = job.round_dir
    records_dir = round_dir if dist.is_chief else round_dir / f"worker-{dist.index}"
    timings: dict[str, float] = {}

    def stage(name: str):
        send(Progress(job.round_id, name))
        return time.monotonic()

    started = stage("records")
    records_dir.mkdir(parents=True, exist_ok=True)
    counts = write_records(round_dir / "annotations.jsonl", records_dir)
    timings["records"] = time.monotonic() - started

    try:
        configs = sessions.load_configs(
            job.pipeline_config, job.label_map, job.num_classes,
            records_dir / "train.record", records_dir / "eval.record", job.fine_tune,
        )
    except Exception as error:  # text_format.ParseError and friends do not name the file
        raise ValueError(f"{job.pipeline_config} is not a usable pipeline config: "
                         f"{type(error).__name__}: {error}") from error
    adjusted = sessions.adjustments(configs)
    if dist.is_chief:
        sessions.write_pipeline(configs, round_dir / "pipeline.config")

    started = stage("train")
    init = job.init_checkpoint
    session, reused = session_for(configs, init)

    def progress(done: int, total: int, loss: float) -> None:
        send(Progress(job.round_id, "train", done, total, loss))

    tb = job.tensorboard_dir if dist.is_chief else None
    train = session.train(configs, job.steps, init, job.fine_tune, progress,
                          tb / "train" if tb else None)
    timings["train"] = time.monotonic() - started
    if not dist.is_chief:
        with tempfile.TemporaryDirectory(prefix="odal-worker-ckpt-") as scratch:
            session.save(Path(scratch))
        return RoundResult(round_id=job.round_id, counts=counts, train=train, session_reused=reused, export=None,
                           adjusted=adjusted, checkpoint=None, metrics=None, served_metrics=None, gate=None,
                           timings=timings)

    checkpoint_dir = job.checkpoint_dir
    partial = _fresh(checkpoint_dir.with_name(f".{checkpoint_dir.name}.partial"))
    prefix_in_partial = session.save(partial)
    remove_tree(checkpoint_dir)
    publish_dir(partial, checkpoint_dir)
    prefix = str(checkpoint_dir / Path(prefix_in_partial).name)
    session.weights_from = prefix

    metrics = None
    # The candidate's eval outputs: the served cache of the next round, if this candidate is exported (eval_cache).
    outputs = eval_cache.Outputs() if job.gate is not None and not session.uses_eager_eval() else None
    if counts["eval"]:
        started = stage("evaluate")
        metrics = session.evaluate(configs, tb / "eval" if tb else None, _AFTER_REPLY,
                                   **({"record": outputs} if outputs is not None else {}))
        timings["evaluate"] = time.monotonic() - started

    decision, served_metrics = None, None
    if job.gate is not None:
        served, served_error = job.served, None
        if served and metrics is not None:
            started = stage("evaluate served")
            try:
                served_metrics = evaluate_served(session, configs, served.path,
                                                 tb / "eval_served" if tb else None, later=_AFTER_REPLY)
            except Exception as error:  # noqa: BLE001 - recorded in the gate; the round goes on
                served_error = f"{type(error).__name__}: {error}"[:500]
            timings["evaluate_served"] = time.monotonic() - started
        decision = gates.decide(job.gate.metric, job.gate.tolerance, metrics, served_metrics,
                                served.version if served else None, served_error)

    export_mode = warmup = None
    if decision is None or decision["passed"]:
        started = stage("export")
        export_dir = _fresh(job.export_dir)
        export_mode = session.export(prefix, export_dir)
        warmup = warmup_request.add_to_export(export_dir, round_dir / "train.record")
        if job.gate is not None:
            remember_export(session, export_dir, prefix, outputs if metrics is not None else None)
        timings["export"] = time.monotonic() - started

    return RoundResult(
        round_id=job.round_id, counts=counts, train=train, session_reused=reused, export=export_mode,
        warmup=warmup, adjusted=adjusted, checkpoint=prefix, metrics=metrics, served_metrics=served_metrics,
        gate=decision, timings=timings,
    )
