"""The daemon's side of tf.distribute rounds: the job's ``distribute`` spec, and the round job that a multi-worker
chief posts for the other workers (``odal train-worker``) in the shared workspace.

Multi-worker training runs the same program on every worker, in step: each worker must train the same round, from
the same checkpoint, on the same annotations.  The chief (the daemon, ``training.index = 0``) writes the round's job
to ``work_dir/distributed/job.json`` (atomically) before its own worker starts the round, and removes it when the
round has ended; each train-worker runs every job it has not run yet, then waits until that job is withdrawn.  The
workspace (work_dir, the checkpoints, the images) is on a file system every worker mounts at the same path.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from odal.daemon.rounds.contracts import Distribute, ProtocolError, RoundJob, decode, encode
from odal.daemon.system.atomic import atomic_write_text

if TYPE_CHECKING:  # the configuration imports the rounds' gate and pipeline check
    from odal.daemon.config import Config


def spec(cfg: Config) -> Distribute | None:
    """What the worker needs to make the strategy (``odal.daemon.worker.distribute``); None: the default one."""
    if cfg.strategy == "default":
        return None
    if cfg.strategy == "mirrored":
        return Distribute("mirrored", cpu_devices=cfg.cpu_devices)
    return Distribute("multi_worker", workers=cfg.workers, index=cfg.worker_index)


def job_path(cfg: Config) -> Path:
    return cfg.work_dir / "distributed" / "job.json"


def announce(cfg: Config, job: RoundJob) -> str:
    """Post ``job`` for the other workers; returns its posting's id."""
    posting = uuid.uuid4().hex
    job_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_path(cfg), json.dumps({"id": posting, "posted_at": time.time(), "job": encode(job)}))
    return posting


def withdraw(cfg: Config) -> None:
    job_path(cfg).unlink(missing_ok=True)


def posted(cfg: Config) -> tuple[str, RoundJob] | None:
    """(posting id, job) posted now, or None (none, or not a job)."""
    try:
        posting = json.loads(job_path(cfg).read_text(encoding="utf-8"))
        job = decode(posting["job"])
    except (OSError, ValueError, KeyError, TypeError, ProtocolError):
        return None
    return (str(posting["id"]), job) if isinstance(job, RoundJob) else None
