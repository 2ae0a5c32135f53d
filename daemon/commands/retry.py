"""``odal retry``: read every source again from its start, so lines fixed since they were set aside come in.

Re-reading is harmless (the ledger deduplicates: an unchanged answer changes nothing), and each source read from
its start replaces its own set-aside rows, so what is still bad is listed again and what was fixed leaves the list.
Lines that only waited for their image need no retry: the daemon tries them again when the image file appears.

While a daemon runs it is the only writer of the ledger, so it is asked (SIGUSR1) to do this itself; otherwise the
read positions are dropped here, under the workspace lock, and the next start reads everything again.
"""

from __future__ import annotations

import os
import signal
import socket

from odal.daemon.config import Config
from odal.common.errors import OdalError, WorkspaceLocked
from odal.daemon.store.ledger import Ledger
from odal.daemon.system.lock import WorkspaceLock, read_owner


class RetryError(OdalError):
    """The running daemon could not be asked to read its sources again."""


def retry(cfg: Config) -> str:
    """Ask the running daemon to read its sources again, or prepare its next start to; returns what was done.

    Tried twice: a daemon that stops between the two steps (it holds the lock, then is gone before it is signalled)
    is caught by the second attempt."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a second `odal retry` meanwhile must not kill this one
    for _attempt in range(2):
        try:
            return _forget_read_positions(cfg)
        except (WorkspaceLocked, PermissionError) as error:
            locked = error
        done = _signal_daemon(cfg)
        if done is not None:
            return done
    owner = read_owner(cfg.work_dir)
    if owner is not None and owner.get("pid") is not None:
        raise RetryError(f"the daemon recorded in the workspace lock (pid {owner['pid']}) cannot be found from here")
    raise RetryError(f"cannot take the workspace lock ({locked}) and no running daemon was found; run "
                     f"`odal retry` as the user that owns {cfg.work_dir}")


def _forget_read_positions(cfg: Config) -> str:
    """No daemon runs: drop the read positions under the workspace lock (raises if the lock cannot be taken)."""
    lock = WorkspaceLock(cfg.work_dir)
    lock.acquire()
    try:
        ledger = Ledger(cfg.ledger_path)
        try:
            sources = ledger.forget_all_sources()
            waiting = ledger.counts()["invalid"]
        finally:
            ledger.close()
    finally:
        lock.release()
    return (f"no daemon is running: its next start reads {len(sources)} source(s) again from the start "
            f"({waiting} line(s) set aside now)")


def _signal_daemon(cfg: Config) -> str | None:
    """SIGUSR1 to the daemon that holds the lock; None if there is none to signal (it stopped just now, or the lock
    file could not be written and names nobody)."""
    owner = read_owner(cfg.work_dir)
    if owner is None or owner.get("pid") is None:
        return None
    if owner.get("host") not in (None, socket.gethostname()):
        raise RetryError(f"the daemon of {cfg.work_dir} runs on host {owner['host']}; run `odal retry` there")
    pid = int(owner["pid"])
    try:
        os.kill(pid, signal.SIGUSR1)
    except PermissionError as error:
        raise RetryError(f"not allowed to signal the daemon (pid {pid}, another user): run `odal retry` as that "
                         f"user, or `sudo kill -USR1 $(systemctl show --value -p MainPID odal-daemon)`") from error
    except ProcessLookupError:
        return None
    return f"asked the daemon (pid {pid}) to read every source again; `odal status` shows what is still set aside"
