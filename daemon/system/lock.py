"""One daemon per workspace: an exclusive ``flock`` on ``<work_dir>/daemon.lock`` that records its owner.

The kernel releases a flock when its holder dies, however it dies, so a lock file left by a dead daemon is simply
taken over (its old owner record is kept in ``previous_owner`` for the log).  The owner record (pid, host, start
time, as JSON) is written into the lock file in place after the lock is held: the file is never replaced, because
the lock lives on its inode.  ``read_owner`` tells ``odal status`` who runs the workspace, if anyone.

The file descriptor is close-on-exec, so an exec'd worker never holds the lock; do not ``fork`` without ``exec``
while holding it (the child would keep the lock alive after the daemon's death).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from odal.common.errors import WorkspaceLocked

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "WorkspaceLock", "read_owner"]

LOCK_NAME = "daemon.lock"
# A reader (read_owner) probes the lock for an instant, and a new owner writes its record just after locking:
# both sides retry for this long before concluding anything.
_RETRY_SECONDS = 1.0
_RETRY_STEP = 0.02


def _read_record(fd: int) -> dict | None:
    raw = os.pread(fd, 65536, 0)
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _try_flock(fd: int, operation: int) -> bool:
    """Non-blocking flock, retried briefly so that another process's momentary probe is not taken for an owner."""
    deadline = time.monotonic() + _RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(_RETRY_STEP)


def _owner_of_held_lock(fd: int) -> dict:
    """The record of a lock someone holds; it may be moments from being written, so wait for it briefly."""
    deadline = time.monotonic() + _RETRY_SECONDS
    while (record := _read_record(fd)) is None and time.monotonic() < deadline:
        time.sleep(_RETRY_STEP)
    return record or {"pid": None, "host": None, "started": None}


def _describe(owner: dict) -> str:
    pid = owner.get("pid") or "unknown"
    host = owner.get("host") or "unknown host"
    where = "this host" if host == socket.gethostname() else f"host {host}"
    started = f", started {owner['started']}" if owner.get("started") else ""
    return f"pid {pid} on {where}{started}"


class WorkspaceLock:
    """Exclusive, non-blocking ownership of a workspace; a context manager that returns itself.

    ``acquire()`` raises ``WorkspaceLocked`` naming the running owner's pid and host.
    """

    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / LOCK_NAME
        self.owner: dict | None = None
        self.previous_owner: dict | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int:
        if self._fd is None:
            raise RuntimeError("workspace lock is not held")
        return self._fd

    def acquire(self) -> dict:
        """Take the lock and record this process as its owner; returns the owner record."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _try_flock(fd, fcntl.LOCK_EX):
                owner = _owner_of_held_lock(fd)
                raise WorkspaceLocked(
                    f"workspace {self.work_dir} is in use by another odal daemon ({_describe(owner)}); "
                    f"stop it first (e.g. `systemctl stop odal-daemon`) or use another workspace. "
                    f"Lock file: {self.path}"
                )
            self.previous_owner = _read_record(fd)
            owner = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            data = json.dumps(owner).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        if self.previous_owner:
            log.info("took over %s from a daemon that is no longer running (%s)",
                     self.path, _describe(self.previous_owner))
        self._fd, self.owner = fd, owner
        return owner

    def release(self) -> None:
        """Clear the owner record and let go (idempotent).  The file itself stays: its inode is the lock."""
        fd, self._fd, self.owner = self._fd, None, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "WorkspaceLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"WorkspaceLock({str(self.work_dir)!r}, held={self.held})"


def read_owner(work_dir: str | os.PathLike) -> dict | None:
    """The running daemon's owner record ({"pid", "host", "started"}), or None if no daemon holds the workspace.

    A lock file left by a dead daemon counts as free.  Never creates or changes the file.
    """
    try:
        fd = os.open(Path(work_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            return _owner_of_held_lock(fd)
        return None  # nobody holds it (closing the fd below drops our probe at once)
    finally:
        os.close(fd)
