"""The daemon's degraded state: a failure that will come back until something outside changes (the work dir's
disk is full, the disk fails), retried with backoff instead of exiting.

The loop hands each failing event to :meth:`Degraded.failed`; :meth:`Degraded.due` gives them back once the
backoff has passed (1 s, 2 s, 4 s ... at most ``max_wait``); after a tick in which the retried events went through,
:meth:`Degraded.tick` reports the recovery.  Nothing is lost meanwhile: an event is only an "ingest this source from
where it stopped", and the ledger commits rows together with the read position.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable, Hashable

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
_SQLITE_DISK = ("database or disk is full", "disk i/o error", "attempt to write a readonly database",
                "unable to open database file")


def is_disk_error(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) says the work dir cannot be written now (full, read-only, failing)."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
            return True
        if isinstance(error, sqlite3.Error) and any(text in str(error).lower() for text in _SQLITE_DISK):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class Degraded:
    def __init__(self, first: float = 1.0, max_wait: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.first, self.max_wait, self._clock = first, max_wait, clock
        self.reason: str | None = None
        self.since: float | None = None
        self._wait = first
        self._retry_at = 0.0
        self._events: set[Hashable] = set()
        self._failed_now = False
        self._attempted = False

    @property
    def active(self) -> bool:
        return self.reason is not None

    @property
    def retry_in(self) -> float:
        return max(0.0, self._retry_at - self._clock())

    def failed(self, what: str, error: BaseException, event: Hashable | None = None) -> str:
        """``what`` failed with ``error``; ``event`` (if any) is tried again after the backoff. Returns the
        status text to show."""
        now = self._clock()
        if self.reason is None:
            self.since = now
            self._wait = self.first
        else:
            self._wait = min(self._wait * 2, self.max_wait) if self._attempted else self._wait
        self.reason = f"{what}: {type(error).__name__}: {error}"
        self._retry_at = now + self._wait
        self._attempted = False
        self._failed_now = True
        if event is not None:
            self._events.add(event)
        return f"degraded: {self.reason}; retrying in {self._wait:g} s"

    def due(self) -> set:
        """The events to try again now (empty until the backoff has passed)."""
        if not self._events or self._clock() < self._retry_at:
            return set()
        events, self._events = self._events, set()
        self._attempted = True
        return events

    def may_try(self) -> bool:
        """For work without an event (scoring, rounds): not while degraded, until the backoff has passed."""
        return self.reason is None or self._clock() >= self._retry_at

    def tick(self) -> bool:
        """Call once a loop turn, after the events were handled; True when this turn recovered."""
        failed, self._failed_now = self._failed_now, False
        if self.reason is None or failed or self._events or self._clock() < self._retry_at:
            return False
        self.reason, self.since, self._wait, self._attempted = None, None, self.first, False
        return True
