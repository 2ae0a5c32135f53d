"""The one client of the TensorFlow worker child (``python -m odal.daemon.worker``), used by the daemon's rounds,
the benchmarks and the tests.

The daemon process never imports TensorFlow: :class:`Worker` owns one long-lived child that keeps TF and the traced
model between rounds, sends it typed jobs and reads typed answers (odal.daemon.rounds.contracts).  If the child
dies, the round fails cleanly (RoundFailed) and the next round starts a new child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from odal.common.errors import RoundFailed
from odal.common.processes import kill_process_group, stop_process_group
from odal.daemon.rounds.contracts import (JobFailed, Prewarmed, PrewarmJob, Progress, ProtocolError, Ready, RoundJob,
                                          RoundResult, decode, encode)
from odal.daemon.system import log as logs
from odal.daemon.system.atomic import remove_tree
from odal.serving.discovery import TEMPLATE_DIR

if TYPE_CHECKING:
    from odal.daemon.config import Config

log = logs.get("odal.worker_client")


class Abandoned(Exception):
    """The round was stopped on purpose (daemon shutting down)."""


class Worker:
    """The TensorFlow child process: started on first use, reused across rounds, stopped politely.

    A child whose memory (RSS) after a round is above ``max_rss`` bytes is retired and the next round starts a
    fresh one: whatever TensorFlow keeps from round to round (a few MiB; see bench/results/worker_memory.md) cannot
    add up over weeks.  The round's result is returned at once; the retired child's exit (3-9 s of TensorFlow
    teardown on 2 busy cores) is waited for in the background.  The fresh child pays the first-round costs
    (tracing, a whole SavedModel) once; with a ``prewarm_job`` (odal.daemon.worker.prewarm) it pays them in the
    background when it starts (``prewarm()``, and after a retirement, once the old child is gone), while the daemon
    waits for annotations, not after they arrive (``wait_prewarmed()`` waits for it).

    A child keeps the tf.distribute strategy of its first job (``job.distribute``): a job with another one (the
    strategy changed on reload) retires it first.  A multi-worker child serves one round only: each round forms its
    own collective group with the other workers (``odal train-worker``), so the next round starts a new child.
    """

    def __init__(self, log_path: Path, max_bytes: int = 0, backups: int = 3, max_rss: int = 0,
                 prewarm_job: PrewarmJob | None = None):
        self._log_path = log_path
        self._prewarm_job = prewarm_job
        self._stale_template: Path | None = None  # a template folder prewarm() removes (no prewarm job)
        self._spec = None  # the job.distribute the child was started for (a child keeps its strategy)
        self._busy = threading.Lock()  # one job at a time in the child: a prewarm, or a round
        self._log_rotation = (max_bytes, backups)  # its stderr log is rotated when a child starts, if too big
        self._max_rss = max_rss
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = False  # set by stop(): a child ending now was stopped on purpose
        self._stopped = threading.Event()
        self._prewarming: threading.Thread | None = None  # the last background prewarm

    @classmethod
    def for_config(cls, cfg: Config, labels: list[str] | None = None) -> "Worker":
        """The daemon's worker: its log and memory bound from ``cfg``, and (``[training] prewarm``, given the
        workspace's ``labels``) the prewarm job of its model, built under the configured strategy, sent by
        ``prewarm()``.  No prewarm for ``multi_worker``: its child lives one round, and building the model there
        needs every other worker in the collective group."""
        job = None
        template = cfg.base_path / TEMPLATE_DIR  # the prewarm's SavedModel, for the server (serving/template.py)
        if cfg.prewarm and labels is not None and cfg.strategy != "multi_worker":
            from odal.daemon.rounds import distributed

            job = PrewarmJob(cfg.pipeline_config, cfg.label_map, len(labels), distributed.spec(cfg), template)
        worker = cls(cfg.work_dir / "logs" / "worker.log", cfg.log_max_bytes, cfg.log_backups, cfg.worker_max_bytes,
                     prewarm_job=job)
        worker._stale_template = template if job is None else None
        return worker

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
        try:
            ready = decode(proc.stdout.readline())
        except ProtocolError:
            ready = None
        if not isinstance(ready, Ready):
            proc.kill()
            proc.wait()
            raise RoundFailed(f"the worker did not start; see {self._log_path}")
        log.info("worker_started", pid=proc.pid)
        return proc

    def prewarm(self, wait: bool = False) -> None:
        """Start the child now and have it build and trace the model, in a background thread (a round waits for
        it), or in this one with ``wait``."""
        if self._prewarm_job is None and self._stale_template is not None and self._stale_template.exists():
            remove_tree(self._stale_template)  # no prewarm: no template of this model; the server lets it go
            log.info("template_removed", path=str(self._stale_template), reason="no prewarm")
        if self._prewarm_job is None or self._stopping:
            return
        if wait:
            self._prewarm()
        else:
            self._prewarming = threading.Thread(target=self._prewarm, name="odal-worker-prewarm", daemon=True)
            self._prewarming.start()

    def wait_prewarmed(self, timeout: float | None = None) -> None:
        """Wait for a prewarm running in the background (e.g. the one after a retirement) to end."""
        if self._prewarming is not None:
            self._prewarming.join(timeout)

    def _prewarm(self) -> None:
        with self._busy:
            self._prewarm_now()

    def _prewarm_now(self) -> None:
        """The prewarm, ``_busy`` held (a failure is logged: the round then builds what it needs itself)."""
        if self._prewarm_job is None:
            return
        try:
            with self._lock:
                if self._stopping:
                    return
                if self._proc is None or self._proc.poll() is not None:
                    self._proc, self._spec = self._start(), self._prewarm_job.distribute
                elif self._spec != self._prewarm_job.distribute:
                    return  # a child keeps its strategy: the next round replaces it
                proc = self._proc
            proc.stdin.write(encode(self._prewarm_job))
            proc.stdin.flush()
            for line in proc.stdout:
                message = decode(line)
                if isinstance(message, Prewarmed):
                    if message.ok:
                        log.info("worker_prewarmed", pid=proc.pid, built=message.built,
                                 seconds=round(message.seconds, 2), template=message.template, undo=message.undo,
                                 **{k: round(v, 2) for k, v in (message.timings or {}).items()})
                    else:
                        log.warning("worker_prewarm_failed", pid=proc.pid, error=message.error)
                    return
        except Exception as error:  # noqa: BLE001 - the round starts (or builds) what it needs itself
            if not self._stopping:
                log.warning("worker_prewarm_failed", error=f"{type(error).__name__}: {error}")

    def run(self, job: RoundJob, on_progress: Callable[[Progress], None] = lambda progress: None) -> RoundResult:
        """Send one job; relay its progress; return its result (raises RoundFailed / Abandoned).  An answer for
        another round than ``job.round_id``, or a line that is not a protocol message, fails the round."""
        with self._busy:
            return self._run(job, on_progress)

    def _run(self, job: RoundJob, on_progress: Callable[[Progress], None]) -> RoundResult:
        with self._lock:
            if self._stopping:
                raise Abandoned("worker stopping")
            if self._proc is not None and self._proc.poll() is None and job.distribute != self._spec:
                self._retire(self._proc, reason="training.strategy changed")
            if self._proc is None or self._proc.poll() is not None:
                self._proc, self._spec = self._start(), job.distribute
            proc = self._proc
        if self._stopping:  # stop() ran while the child was starting: it never saw it
            self.stop()
            raise Abandoned("worker stopped")
        try:
            proc.stdin.write(encode(job))
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone; its exit status (below) says why
        try:
            for line in proc.stdout:
                message = _answer(job, line)
                if isinstance(message, Progress):
                    on_progress(message)
                elif isinstance(message, (RoundResult, JobFailed)):
                    break
            else:
                message = None
        except BaseException:  # a bad or foreign answer, or on_progress raised: the child's later answers must not
            self._discard(proc)  # be read as the next job's, so it goes and the next round starts a fresh one
            raise
        if isinstance(message, JobFailed):
            raise RoundFailed(message.error)
        if isinstance(message, RoundResult):
            self._retire_if_grown(proc, one_round=job.distribute is not None
                                  and job.distribute.strategy == "multi_worker")
            return message
        code = proc.wait()
        self._proc = None
        if code in (-signal.SIGTERM, -signal.SIGKILL) and self._stopping:
            raise Abandoned("worker stopped")
        raise RoundFailed(f"the worker exited with {code} during the round; see {self._log_path}")

    def _discard(self, proc: subprocess.Popen) -> None:
        """Kill a child that is out of step with its client (a bad or foreign answer, a relay that raised)."""
        with self._lock:
            if self._proc is proc:
                self._proc = None
        kill_process_group(proc)
        log.warning("worker_discarded", pid=proc.pid)

    def _retire_if_grown(self, proc: subprocess.Popen, one_round: bool = False) -> None:
        rss = rss_bytes(proc.pid)
        if one_round:
            with self._lock:
                self._retire(proc, reason="one round per child (multi_worker)")
        elif self._max_rss and rss is not None and rss > self._max_rss:
            with self._lock:
                self._retire(proc, wait=False, rss_mb=round(rss / (1 << 20)),
                             max_mb=round(self._max_rss / (1 << 20)))
            # The round is done: its result goes back now.  The child's exit (seconds of TensorFlow teardown) is
            # waited for in the background, then the next child builds and traces the model, not in the next round.
            self._prewarming = threading.Thread(target=self._after_retirement, args=(proc,), daemon=True,
                                                name="odal-worker-retired")
            self._prewarming.start()

    def _after_retirement(self, proc: subprocess.Popen) -> None:
        with self._busy:  # after the round that retired it (run() holds it); a next round waits for this
            _wait_exit(proc)
            if not self._stopping and self._proc is None:  # (a round that came first started its own child)
                self._prewarm_now()  # only once the old child's memory is free

    def _retire(self, proc: subprocess.Popen, wait: bool = True, **why) -> None:
        """End the child politely (it exits at the end of its input); the next job starts a new one.  Without
        ``wait``, its exit is left to the caller (``_wait_exit``)."""
        self._proc = None
        proc.stdin.close()  # the child ends at the end of its input
        if wait:
            _wait_exit(proc)
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
        except OSError:
            pass
        stop_process_group(proc, timeout)
        log.info("worker_stopped", pid=proc.pid)


def _wait_exit(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait for a child told to end (its input closed) to exit; kill its process group after ``timeout``."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)


def worker_for(cfg: Config, labels: list[str]) -> Worker:
    """The daemon's worker for ``cfg`` and the workspace's ``labels`` (see :meth:`Worker.for_config`)."""
    return Worker.for_config(cfg, labels)


def rss_bytes(pid: int) -> int | None:
    """The resident memory of process ``pid`` (``VmRSS`` in /proc), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _answer(job: RoundJob, line: str):
    """The message on ``line``, checked to answer ``job`` (RoundFailed when it is not a message, or answers another
    round; a failure whose round id the child could not read is taken as this job's)."""
    try:
        message = decode(line)
    except ProtocolError as error:
        raise RoundFailed(f"the worker answered round {job.round_id} with a bad line: {error}") from None
    if isinstance(message, JobFailed) and message.round_id is None:
        return message
    if getattr(message, "round_id", job.round_id) != job.round_id:
        raise RoundFailed(f"the worker answered round {message.round_id} to the job of round {job.round_id}")
    return message
