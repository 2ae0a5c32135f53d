"""The degraded state: a failing event comes back after a backoff that doubles up to a cap, and the state ends
only after a turn in which the retried events went through."""

from __future__ import annotations

import errno
import sqlite3

from odal.daemon.system.degraded import Degraded, is_disk_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_event_is_retried_with_a_doubling_backoff_up_to_the_cap_and_recovery_needs_a_success():
    clock = Clock()
    state = Degraded(first=1.0, max_wait=4.0, clock=clock)
    full = sqlite3.OperationalError("database or disk is full")
    text = state.failed("ingest", full, "export-a")
    assert state.active and text == "degraded: ingest: OperationalError: database or disk is full; retrying in 1 s"
    waits = []
    for _ in range(4):
        assert state.due() == set() and not state.tick()  # not before the backoff has passed
        clock.now += state.retry_in
        assert state.due() == {"export-a"}
        state.failed("ingest", full, "export-a")  # still full
        waits.append(state.retry_in)
        assert not state.tick()
    assert waits == [2.0, 4.0, 4.0, 4.0]
    clock.now += state.retry_in
    assert state.due() == {"export-a"}  # this time it goes through
    assert state.tick() and not state.active and state.due() == set()


def test_disk_errors_are_told_from_the_sources_own_errors():
    assert is_disk_error(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_error(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("writing the blob failed") from cause
    except RuntimeError as wrapped:
        assert is_disk_error(wrapped)
    assert not is_disk_error(ValueError("Exceeds the limit (4300 digits)"))
    assert not is_disk_error(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_disk_error(FileNotFoundError(errno.ENOENT, "gone"))
