"""The daemon: watchers queue events; this loop ingests them and decides when a round runs.

Follow one annotation: a line appended to ``exports/x.jsonl`` -> ``watchers/export_dir.py`` queues
``ExportChanged`` -> :meth:`Daemon._handle` -> ``handlers/ingest.py`` writes it to the ledger -> enough new
accepted annotations and a quiet ``debounce_seconds`` -> ``rounds/round.py`` runs a round in the worker child
(``worker/rounds.py``: records, train, evaluate, export) -> ``rounds/publish.py`` renames the export into
``<base_path>/<version>`` -> TF Serving loads it (``rounds/confirm.py`` checks it answers).

Threads: the watchdog observer (queues events), this main loop (ingest, triggers, scoring, sd_notify, signals),
and at most one round thread (run_round).  Signal handlers only record the signal (no lock, no log: the interrupted
thread may hold the log writer's lock); the loop acts on it within a tick, a long read stops at its next line:
SIGTERM/SIGINT stop (round abandoned, worker stopped politely, exit 0), SIGHUP reloads, SIGUSR1 re-reads sources.
"""

from __future__ import annotations

import collections
import queue
import signal
import sqlite3
import threading
import time
from pathlib import Path

from odal.common.sdnotify import Notifier, watchdog_interval
from odal.daemon import watchers
from odal.daemon.config import Config
from odal.daemon.handlers import ingest, ingest_db
from odal.daemon.handlers.rescorer import Rescorer
from odal.daemon.rounds import publish
from odal.daemon.rounds.round import run_round
from odal.daemon.rounds.worker_client import Abandoned, worker_for
from odal.daemon.sources import limits, prodigy_db
from odal.daemon.sources.label_map import load_label_map
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.store.statusfile import StatusFile
from odal.daemon.system import log as logs
from odal.daemon.system.degraded import Degraded, is_disk_error
from odal.daemon.system.lock import WorkspaceLock
from odal.daemon.system.metrics import Metrics, serve_address
from odal.daemon.watchers.events import ExportChanged, ImageChanged, ProdigyDbChanged
from odal.daemon.watchers.export_dir import export_files
from odal.daemon.watchers.image_dir import SettleRechecks
from odal.serving.client import ServingClient

log = logs.get("odal.daemon")

_TICK = 0.25  # how often the loop wakes without events (debounce resolution, watchdog pings, signals)


class Stopping(BaseException):
    """Raised in the main thread at the next line of a long read once SIGTERM/SIGINT arrived (not an ``Exception``:
    no guarded boundary catches it); nothing half-read is committed, so the next start reads it again."""


class Daemon:
    def __init__(self, cfg: Config, notifier: Notifier | None = None):
        self.cfg = cfg
        self.notifier = notifier or Notifier(unset_environment=True)  # the worker child must not notify
        self.events: queue.Queue = queue.Queue()
        self._signals: collections.deque = collections.deque()  # appended by signal handlers, drained by the loop
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.retry_requested = threading.Event()
        self.labels = load_label_map(cfg.label_map)
        limits.configure(cfg.limits)
        self.degraded = Degraded()  # a full disk: events retried with backoff, shown in status, never an exit
        self.rechecks = SettleRechecks(cfg.limits.settle_seconds + 1.0)
        self.worker = worker_for(cfg, self.labels)  # prewarmed in run(): traced before annotations arrive
        self._round_thread: threading.Thread | None = None
        self._last_event = 0.0
        self._failed_at_seq: int | None = None  # ledger change counter a round last failed on
        self.scorer = self.rescorer = None
        self.metrics = Metrics()
        self.status_file = StatusFile(cfg.work_dir)
        self._ping_every = watchdog_interval() or 10.0
        self._failing: dict[str, tuple[float, float]] = {}  # loop step -> (its backoff, when it may run again)
        self._last_ping = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        with WorkspaceLock(cfg.work_dir):
            self.ledger = Ledger(cfg.ledger_path)
            self.history = History(cfg.ledger_path)
            self.queue = ActiveQueue(cfg.ledger_path, cfg.data_dir)
            self.queue.scan()
            self.scorer = ServingClient(cfg.serving_address, timeout=5, retries=1) if cfg.serving_address else None
            if self.scorer is not None:  # scores on its own thread, never holding this loop
                self.rescorer = Rescorer(self.queue, self.scorer, cfg.model_name, model_side=cfg.scoring_side)
            publish.recover(cfg.base_path, self.history)
            abandoned = self.history.abandon_running()
            if cfg.prodigy_db is not None:
                try:
                    prodigy_db.check_schema(cfg.prodigy_db)
                except sqlite3.OperationalError as error:  # Prodigy is writing: checked again on each read
                    log.warning("prodigy_db_locked", file=str(cfg.prodigy_db), error=str(error))
            observer = watchers.start(cfg, self.events)
            metrics_server = serve_address(cfg.metrics_address, self.metrics)
            log.info("daemon_started", config=str(cfg.path), export_dir=str(cfg.export_dir or ""),
                     prodigy_db=str(cfg.prodigy_db or ""), data_dir=str(cfg.data_dir), base_path=str(cfg.base_path),
                     labels=self.labels, abandoned_rounds=abandoned)
            fine_tune = cfg.fine_tune
            if fine_tune.checkpoint:  # where round 1 starts from (a round with an earlier checkpoint continues it)
                log.info("fine_tune_checkpoint", path=fine_tune.checkpoint, type=fine_tune.type,
                         source=fine_tune.source, **({"override": fine_tune.note} if fine_tune.note else {}))
            self.worker.prewarm()
            if self.rescorer is not None:
                self.rescorer.start()
            try:
                self.notifier.ready()  # the watchers run; what they see meanwhile waits on the queue
                self._set_status("reading annotation sources")
                self._ingest_all()
                self._set_status("idle")
                self._loop()
            except Stopping:
                pass
            finally:
                self.notifier.stopping()
                observer.stop()
                if metrics_server is not None:
                    metrics_server.close()
                self.worker.stop()
                if self._round_thread is not None:
                    self._round_thread.join(timeout=60)
                observer.join(timeout=10)
                if self.scorer is not None:
                    self.rescorer.stop()
                    self.scorer.close()
                self.queue.close()
                self.ledger.close()
                self.history.close()
                log.info("daemon_stopped")
        return 0

    def install_signal_handlers(self) -> None:
        """Each handler only appends the signal number to a deque (atomic, takes no lock): a handler that logged,
        or set a ``threading.Event``, or put on a queue, could wait for a lock the interrupted thread holds."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, lambda number, _frame: self._signals.append(number))

    def _take_signals(self) -> None:
        """Act on the signals recorded since the last call (main thread only): log each, set its request flag."""
        while self._signals:
            number = self._signals.popleft()
            log.info("signal_received", signal=signal.Signals(number).name)
            if number in (signal.SIGTERM, signal.SIGINT):
                self.stop_requested.set()
            elif number == signal.SIGHUP:
                self.reload_requested.set()
            elif number == signal.SIGUSR1:
                self.retry_requested.set()

    def _loop(self) -> None:
        while True:
            self._take_signals()
            if self.stop_requested.is_set():
                return
            try:
                event = self.events.get(timeout=_TICK)
            except queue.Empty:
                event = None
            pending = {event} if event is not None else set()
            while True:  # coalesce a burst of events: each source is read once
                try:
                    pending.add(self.events.get_nowait())
                except queue.Empty:
                    break
            pending.discard(None)
            pending |= self.degraded.due()
            for item in pending:
                self._handle(item)
            self.rechecks.seen(pending)
            for item in self.rechecks.due():  # once more when settled: broken-while-copying or broken for good
                self._handle(item)
            if self.reload_requested.is_set():
                self._step("reload", self._reload)
            if self.retry_requested.is_set():
                self._step("retry", self._retry, again=self.retry_requested.set)
            self._step("round trigger", self._maybe_start_round)
            self._step("scoring", self._score_some)
            if self.degraded.tick():
                log.info("degraded_recovered")
                self._set_status("idle")
                self.status_file.set_degraded(None)  # written now, with the new text
            self.status_file.flush()
            self._keepalive()

    def _step(self, name: str, action, again=None) -> None:
        """A loop step guarded like an event: an exception is logged (``step_failed``, or degraded for a disk
        error), the step waits 1 s doubling to 60 s (``again`` re-arms the request it took), the daemon goes on."""
        failing = self._failing.get(name)
        if failing is not None and time.monotonic() < failing[1]:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - a broken ledger or a bug in one step never stops the daemon
            wait = min(failing[0] * 2, 60.0) if failing is not None else 1.0
            self._failing[name] = (wait, time.monotonic() + wait)
            if again is not None:
                again()
            self.metrics.error("step")
            if is_disk_error(error):
                self._disk_failed(name, error)
                return
            log.error("step_failed", step=name, error_class=type(error).__name__,
                      error=str(error)[:limits.MAX_ERROR_CHARS], retry_in=wait, exc_info=True)
            self._set_status(f"{name} failing: {type(error).__name__}: {str(error)[:200]}; retrying in {wait:g} s")
            return
        if failing is not None:
            del self._failing[name]
            log.info("step_recovered", step=name)
            self._set_status("idle")

    def _keepalive(self) -> None:
        """The systemd watchdog ping, at most every half period: from the loop, and per line of a long read (which
        stops there once the daemon is asked to stop)."""
        self._take_signals()
        if self.stop_requested.is_set():
            raise Stopping
        now = time.monotonic()
        if now - self._last_ping >= self._ping_every:
            self.notifier.watchdog()
            self._last_ping = now

    # -- events --------------------------------------------------------------------------------------------------------
    def _handle(self, event) -> None:
        """The guarded boundary of one event: anything it raises is logged once and the daemon goes on (each
        source guards its own lines; what comes up here is a storage error or a bug)."""
        self._last_event = time.monotonic()
        try:
            if isinstance(event, ExportChanged):
                stats = ingest.ingest_export_file(Path(event.path), self.ledger, self.labels, self.cfg.data_dir,
                                                  self._blob_dir, heartbeat=self._keepalive)
                self._log_ingest(event.path, stats)
            elif isinstance(event, ProdigyDbChanged):
                stats = ingest_db.ingest_prodigy_db(Path(event.path), self.cfg.prodigy_dataset, self.ledger,
                                                    self.labels, self.cfg.data_dir, self._blob_dir,
                                                    heartbeat=self._keepalive)
                self._log_ingest(event.path, stats)
            elif isinstance(event, ImageChanged):
                self.queue.image_changed(event.path, event.deleted)
                if not event.deleted:  # lines set aside until this image appeared (or finished copying)
                    stats = ingest.retry_waiting(Path(event.path), self.ledger, self.labels, self.cfg.data_dir,
                                                 self._blob_dir, heartbeat=self._keepalive)
                    if stats["retried"]:
                        self._log_ingest(event.path, stats)
        except Exception as error:  # noqa: BLE001 - one bad source never stops the daemon
            if is_disk_error(error):  # not the source's fault: the same event is tried again with backoff
                self._disk_failed(f"handling {type(event).__name__} {getattr(event, 'path', '')}", error, event)
                return
            source = getattr(event, "path", repr(event))  # structlog's own first argument is named `event`
            log.error("event_failed", source=source, kind=type(event).__name__, error_class=type(error).__name__,
                      error=str(error)[:limits.MAX_ERROR_CHARS], exc_info=True)
            self.metrics.error("event")

    def _disk_failed(self, what: str, error: BaseException, event=None) -> None:
        """The work dir cannot be written: degraded (status, sd_notify STATUS=, log), retried with backoff."""
        text = self.degraded.failed(what, error, event)
        log.error("degraded", what=what, error=f"{type(error).__name__}: {error}",
                  retry_in=round(self.degraded.retry_in, 1))
        self.metrics.error("disk")
        self._set_status(text)  # first: set_degraded writes at once, with this text (set() may wait a second)
        self.status_file.set_degraded(self.degraded.reason)

    @property
    def _blob_dir(self) -> Path:
        return self.cfg.work_dir / "images"

    def _ingest_all(self) -> set[str]:
        """Read everything new in every source (the ledger knows where each stopped); returns the sources' names
        as the set-aside list names them."""
        read = set()
        if self.cfg.export_dir is not None and self.cfg.export_dir.is_dir():
            for path in export_files(self.cfg.export_dir):
                self._handle(ExportChanged(str(path)))
                read.add(ingest.source_label(path))
        if self.cfg.prodigy_db is not None:
            self._handle(ProdigyDbChanged(str(self.cfg.prodigy_db)))
            read.add(prodigy_db.file_label(self.cfg.prodigy_db, self.cfg.prodigy_dataset))
        return read

    def _log_ingest(self, source: str, stats: dict) -> None:
        if any(stats.get(k) for k in ("lines", "set_aside", "inserted", "updated")):
            log.info("ingested", source=source, **{k: v for k, v in stats.items() if v})
            self.metrics.ingested(stats, self.ledger.counts()["invalid"])

    # -- rounds --------------------------------------------------------------------------------------------------------
    def _maybe_start_round(self) -> None:
        if self._round_thread is not None and self._round_thread.is_alive():
            return
        if time.monotonic() - self._last_event < self.cfg.debounce_seconds or self.degraded.active:
            return  # a round on a full disk would fail and wait for new annotations: wait for the room instead
        new = self.ledger.accepted_changes_since(self.history.last_trained_seq())
        if new < self.cfg.min_new_annotations:
            return
        seq = self.ledger.max_seq()
        if self._failed_at_seq == seq:
            return  # the last round failed on exactly this data; wait for new annotations before retrying
        accepted = self.ledger.accepted()
        self._round_thread = threading.Thread(target=self._round, args=(accepted, seq), name="odal-round",
                                              daemon=True)
        self._round_thread.start()

    def _score_some(self) -> None:
        """Let the rescorer thread score while no round runs and the daemon is not degraded; a disk error it met
        makes the daemon degraded here, in the loop."""
        if self.rescorer is None:
            return
        self.rescorer.allowed = self.degraded.may_try() and not (self._round_thread and self._round_thread.is_alive())
        error = self.rescorer.take_disk_error()
        if error is not None:
            self._disk_failed("scoring the active-learning queue", error)

    def _round(self, accepted: list[dict], seq: int) -> None:
        history = History(self.cfg.ledger_path)
        self.metrics.round_started()
        try:
            outcome = run_round(self.cfg, history, accepted, seq, self.labels, self.worker, self._set_status,
                                confirm=self._confirmer())
            self.metrics.round_finished(outcome.state, outcome.timings, outcome.metrics, outcome.version,
                                        outcome.gate)
            if outcome.state == "failed":
                self._failed_at_seq = seq
            elif outcome.state == "published" and self.scorer is not None:
                self.queue.rescore_all(outcome.version)  # the new model decides what is uncertain now
                self.rescorer.wake()
        except Abandoned:
            self.metrics.round_finished("abandoned")
        except Exception as error:  # noqa: BLE001 - else the thread dies and the same round restarts every tick
            log.exception("round_crashed", error=f"{type(error).__name__}: {error}")
            self._failed_at_seq = seq
            self.metrics.round_finished("failed")
        finally:
            history.close()
            self._set_status("idle")

    def _confirmer(self):
        """The post-publish check against the serving endpoint, or None when no server is configured."""
        if not self.cfg.serving_address:
            return None
        from odal.daemon.rounds import confirm

        return confirm.Confirmer(self.cfg)

    def _set_status(self, text: str, detail: dict | None = None) -> None:  # detail: a round's stage, step, ETA
        self.notifier.status(text)
        self.status_file.set(text, detail)

    def _reload(self) -> None:
        from odal.daemon import config as config_module
        from odal.daemon.system import reload

        self.reload_requested.clear()
        self.notifier.reloading()
        try:
            new, waiting = reload.merge(self.cfg, config_module.load(self.cfg.path))
            labels = load_label_map(new.label_map)
            changed = labels != self.labels
            self.cfg, self.labels = new, labels
            limits.configure(new.limits)
            self.rechecks.delay = new.limits.settle_seconds + 1.0
            log.info("config_reloaded", config=str(new.path), labels_changed=changed)
            if waiting:  # kept at their running values until the daemon restarts
                log.warning("config_needs_restart", keys=waiting)
            if changed:  # lines set aside for a label that is known now get their chance
                self.retry_requested.set()
            else:
                self._ingest_all()
        except Exception as error:  # noqa: BLE001 - a bad edit keeps the running configuration
            log.error("config_reload_failed", error=str(error))
        self.notifier.ready()

    def _retry(self) -> None:
        """Read every source again from its start (deduplicated): fixed lines come in, still-bad ones stay aside."""
        self.retry_requested.clear()
        self.ledger.forget_all_sources()
        before = self.ledger.counts()["invalid"]
        read = self._ingest_all()
        gone = 0
        if self.cfg.export_dir is None or self.cfg.export_dir.is_dir():  # not while the folder is unmounted
            gone = self.ledger.drop_invalid_except(read)  # lines of files that are no longer there (or configured)
        log.info("sources_reread", sources=len(read), set_aside_before=before,
                 set_aside_after=self.ledger.counts()["invalid"], dropped_with_their_source=gone)
