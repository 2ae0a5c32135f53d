"""The active-learning queue re-scored in the background: a thread of its own, never the daemon's loop.

After a new version is published every image of the data dir is pending again (``ActiveQueue.rescore_all``); a
data dir of 10 000 images takes minutes to score, and that work must not hold the loop that handles annotations,
image events and signals.  :class:`Rescorer` runs :func:`odal.daemon.handlers.scoring.score_pending` chunk after
chunk on its own thread, with a small pool of threads reading and decoding images ahead of the predicts (Pillow
and the gRPC client release the GIL while they work).  The loop only says, once a turn, whether scoring may run
(``allowed``: no round running, not degraded) and wakes it when a version was published; with nothing pending
the server not answering, or answering with a version older than the queue's target (not loaded yet), the thread
looks again after ``idle_seconds`` (or when woken).  An exception in a
chunk is logged and waited out; a disk error is handed to the loop (``take_disk_error``), which owns the
degraded state.

    rescorer = Rescorer(queue, client, cfg.model_name, model_side=cfg.scoring_side)
    rescorer.start()
    ...  rescorer.allowed = not round_running   # each loop turn
    ...  rescorer.wake()                        # a version was published
    rescorer.stop()
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from odal.daemon.handlers import scoring
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.system import log as logs
from odal.daemon.system.degraded import is_disk_error

log = logs.get("odal.active_queue")

CHUNK = 32  # images per predict batch and per ledger transaction
ERROR_WAIT = 10.0


class Rescorer:
    """Scores pending images of ``queue`` with ``client`` on a background thread while ``allowed``."""

    def __init__(self, queue: ActiveQueue, client, model_name: str, *, model_side: int | None = None,
                 concurrency: int = 4, decoders: int = 2, idle_seconds: float = 10.0) -> None:
        self.queue, self.client, self.model_name, self.model_side = queue, client, model_name, model_side
        self.concurrency, self.decoders, self.idle_seconds = concurrency, decoders, idle_seconds
        self.allowed = True  # set by the loop each turn: False while a round runs or the daemon is degraded
        self.scored = 0  # images scored since start (for tests and status)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._disk_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="odal-rescorer", daemon=True)

    def start(self) -> "Rescorer":
        self._thread.start()
        return self

    def wake(self) -> None:
        """Look for pending images now (a version was published, or the daemon recovered)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the chunk in hand (bounded by the client's deadline) and end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def take_disk_error(self) -> BaseException | None:
        """The disk error that stopped the last chunk, once; the loop turns it into the degraded state."""
        error, self._disk_error = self._disk_error, None
        return error

    def _run(self) -> None:
        with ThreadPoolExecutor(max(self.decoders, 1), thread_name_prefix="odal-decode") as pool:
            while not self._stop.is_set():
                wait = self.idle_seconds
                if self.allowed and self._disk_error is None:
                    versions: set[int] = set()
                    try:
                        scored = scoring.score_pending(self.queue, self.client, self.model_name, limit=CHUNK,
                                                       concurrency=self.concurrency, model_side=self.model_side,
                                                       pool=pool, chunk=CHUNK, versions=versions)
                        self.scored += scored
                        if scored and max(versions) < (self.queue.status()["target_version"] or 0):
                            scored = 0  # the server still answers with an older version: wait for the new one
                    except Exception as error:  # noqa: BLE001 - scoring is a courtesy: it never stops the daemon
                        scored, wait = 0, ERROR_WAIT
                        if is_disk_error(error):
                            self._disk_error = error
                        else:
                            log.error("scoring_failed", error=f"{type(error).__name__}: {error}", exc_info=True)
                    if scored:
                        continue
                self._wake.wait(wait)
                self._wake.clear()
