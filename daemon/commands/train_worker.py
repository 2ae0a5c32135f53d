"""``odal train-worker --config FILE``: one of the other workers of a multi-worker round (not the chief).

It reads the same odal.toml as the chief (``[training] strategy = "multi_worker"``, ``workers``; its own place is
``--index`` or ``training.index``) from the shared workspace, and runs every round job the chief posts
(``odal.daemon.rounds.distributed``) in a fresh TensorFlow worker child (``python -m odal.daemon.worker``), which
joins the chief's ``MultiWorkerMirroredStrategy``, trains in step with it, and writes nothing the chief keeps.  The
child lives until the chief withdraws the job (its round has ended: evaluated, exported, published), so no worker
leaves the collective group while the chief still runs the round.  SIGTERM / SIGINT stop it (and the child).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

from odal.common.errors import ConfigError
from odal.daemon import config as config_module
from odal.daemon.rounds import distributed
from odal.daemon.system import log as logs

POLL_SECONDS = 0.5


def add_parsers(sub) -> None:
    p = sub.add_parser("train-worker", help="a multi-worker round's other worker: trains each round the chief "
                       "(odal-daemon) posts, in step with it")
    p.add_argument("--config", required=True, help="the workspace's odal.toml (on the shared file system)")
    p.add_argument("--index", type=int, default=None, help="this worker's place in training.workers "
                   "(default: training.index)")


def run(args) -> int:
    cfg = config_module.load(args.config)
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
        job = distributed.posted(cfg)
        if job is not None and job["id"] != done:
            done = job["id"]
            run_job(cfg, job, index, stop, log)
        stop.wait(POLL_SECONDS)
    log.info("train_worker_stopped")


def run_job(cfg, job: dict, index: int, stop: threading.Event, log) -> None:
    job = dict(job, distribute=dict(job["distribute"], index=index))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-m", "odal.daemon.worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1, env=env, start_new_session=True)
    log.info("round_joined", round_dir=job["round_dir"], pid=child.pid)
    watcher = threading.Thread(target=_stop_child_on, args=(stop, child), daemon=True)
    watcher.start()
    try:
        child.stdin.write(json.dumps(job) + "\n")
        child.stdin.flush()
        for line in child.stdout:
            message = json.loads(line)
            if message["type"] == "result":
                if message["ok"]:
                    log.info("round_trained", round_dir=job["round_dir"], loss=message["train"]["loss"],
                             global_step=message["train"]["global_step"], timings=message["timings"])
                else:
                    log.error("round_failed", round_dir=job["round_dir"], error=message["error"])
                break
        # Stay in the group until the chief's round has ended.
        while not stop.is_set() and (distributed.posted(cfg) or {}).get("id") == job["id"]:
            stop.wait(POLL_SECONDS)
    except (BrokenPipeError, ValueError) as error:
        log.error("round_failed", round_dir=job["round_dir"], error=f"{type(error).__name__}: {error}")
    finally:
        _end(child)
        stop_watch = stop.is_set()
        log.info("round_left", round_dir=job["round_dir"], exit_code=child.returncode, stopping=stop_watch)


def _stop_child_on(stop: threading.Event, child: subprocess.Popen) -> None:
    while child.poll() is None:
        if stop.wait(0.5):
            _end(child)
            return


def _end(child: subprocess.Popen, timeout: float = 10.0) -> None:
    """Close the child's input (it exits at its end), SIGTERM its session after ``timeout``, SIGKILL after that."""
    if child.poll() is not None:
        return
    try:
        child.stdin.close()
    except OSError:
        pass
    for signum in (None, signal.SIGTERM, signal.SIGKILL):
        if signum is not None:
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                return
        try:
            child.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
