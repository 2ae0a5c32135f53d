"""``odal train-worker --config FILE``: one of the other workers of a multi-worker round (not the chief).

It reads the same odal.toml as the chief (``[training] strategy = "multi_worker"``, ``workers``; its own place is
``--index`` or ``training.index``) from the shared workspace, and runs every round job the chief posts
(``odal.daemon.rounds.distributed``) in a fresh TensorFlow worker child (through the daemon's own client; the
child's log is ``work/logs/train-worker-N.log``), which joins the chief's ``MultiWorkerMirroredStrategy``, trains in step with it, and writes nothing the chief keeps.  The
child lives until the chief withdraws the job (its round has ended: evaluated, exported, published), so no worker
leaves the collective group while the chief still runs the round.  SIGTERM / SIGINT stop it (and the child).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path

from odal.common.errors import ConfigError, RoundFailed
from odal.daemon import config as config_module
from odal.daemon.commands import workspace_args
from odal.daemon.rounds import distributed
from odal.daemon.rounds.contracts import RoundJob
from odal.daemon.rounds.worker_client import Abandoned, Worker
from odal.daemon.system import log as logs

POLL_SECONDS = 0.5


def add_parsers(sub) -> None:
    p = sub.add_parser("train-worker", help="a multi-worker round's other worker: trains each round the chief "
                       "(odal-daemon) posts, in step with it")
    workspace_args.add(p)  # the workspace's odal.toml, on the file system every worker shares
    p.add_argument("--index", type=int, default=None, help="this worker's place in training.workers "
                   "(default: training.index)")


def run(args, config_path: Path) -> int:
    cfg = config_module.load(config_path)
    logs.configure(cfg.log_level)  # stderr (journald); the chief's log file is the daemon's own
    index = cfg.worker_index if args.index is None else args.index
    if cfg.strategy != "multi_worker":
        raise ConfigError(f"{cfg.path}: training.strategy: train-worker needs \"multi_worker\", got {cfg.strategy!r}")
    if not 0 < index < len(cfg.workers):
        raise ConfigError(f"{cfg.path}: training.index: a train-worker is 1..{len(cfg.workers) - 1} "
                          f"(0 is the chief, which runs odal-daemon), got {index}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serve(cfg, index, stop)
    return 0


def serve(cfg, index: int, stop: threading.Event) -> None:
    """Run each posted job once, until ``stop`` is set."""
    log = logs.get("odal.train_worker").bind(index=index, address=cfg.workers[index])
    log.info("train_worker_started", workers=list(cfg.workers), jobs=str(distributed.job_path(cfg)))
    done: str | None = None
    while not stop.is_set():
        found = distributed.posted(cfg)
        if found is not None and found[0] != done:
            done = found[0]
            run_posted(cfg, found[0], found[1], index, stop, log)
        stop.wait(POLL_SECONDS)
    log.info("train_worker_stopped")


def run_posted(cfg, posting: str, job: RoundJob, index: int, stop: threading.Event, log) -> None:
    """Train ``job`` as worker ``index`` in a fresh worker child, which stays in the group until the chief
    withdraws the job."""
    if job.distribute is None or job.distribute.strategy != "multi_worker":
        log.error("job_refused", round=job.round_id, error="the posted job is not a multi_worker job")
        return
    job = dataclasses.replace(job, distribute=dataclasses.replace(job.distribute, index=index))
    worker = Worker(cfg.work_dir / "logs" / f"train-worker-{index}.log", cfg.log_max_bytes, cfg.log_backups)
    finished = threading.Event()

    def stop_on_signal() -> None:
        while not finished.wait(POLL_SECONDS):
            if stop.is_set():
                worker.stop()
                return

    threading.Thread(target=stop_on_signal, name="train-worker-stop", daemon=True).start()
    log.info("round_joined", round=job.round_id)
    try:
        result = worker.run(job)
        log.info("round_trained", round=job.round_id, loss=result.train["loss"],
                 global_step=result.train["global_step"], replicas=result.train.get("replicas"),
                 timings=result.timings)
        while not stop.is_set() and (distributed.posted(cfg) or ("",))[0] == posting:  # the chief's round goes on
            stop.wait(POLL_SECONDS)
    except RoundFailed as error:
        log.error("round_failed", round=job.round_id, error=str(error))
    except Abandoned:
        log.info("round_abandoned", round=job.round_id)
    finally:
        finished.set()
        worker.stop()
