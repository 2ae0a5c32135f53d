"""The sd_notify protocol, spoken directly (stdlib only, no python-systemd).

systemd hands a ``Type=notify`` service the address of a datagram socket in ``NOTIFY_SOCKET`` (a file path, or
``@name`` for a Linux abstract socket).  Each state change is one datagram of ``KEY=value`` lines.  Outside systemd
(no ``NOTIFY_SOCKET``) every call is a no-op, so the daemon runs the same way from a terminal.

A notification is a courtesy, never a reason to fail: a send error is logged once and otherwise ignored.  Note that
after ``reloading()`` the service must call ``ready()`` again, as systemd waits for READY=1 to end the reload.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "watchdog_interval"]


def _address(raw: str) -> str | bytes:
    """``@name`` is an abstract socket (leading NUL byte on the wire); anything else a filesystem path."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    raise ValueError(f"NOTIFY_SOCKET={raw!r} is neither an absolute path nor an @abstract name")


class Notifier:
    """Sends state notifications to systemd; a no-op when ``NOTIFY_SOCKET`` is unset.

    ``env`` defaults to ``os.environ``.  With ``unset_environment=True`` the variable is removed from ``os.environ``
    so that child processes (the worker) do not inherit it.
    """

    def __init__(self, env: Mapping[str, str] | None = None, unset_environment: bool = False) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)
        self._address: str | bytes | None = None
        self._warned = False
        if raw:
            try:
                self._address = _address(raw)
            except ValueError as exc:
                self._warn(str(exc))
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (running under systemd with Type=notify)."""
        return self._address is not None

    def ready(self) -> bool:
        """Start-up (or a reload) is complete."""
        return self.send(READY=1)

    def status(self, text: str) -> bool:
        """A one-line human-readable status, shown by ``systemctl status``."""
        return self.send(STATUS=" ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping; must come more often than ``WatchdogSec=`` (see ``watchdog_interval``)."""
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.send(STOPPING=1)

    def reloading(self) -> bool:
        """A reload has begun; send ``ready()`` when it is done."""
        return self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def send(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=value`` lines, in the order given; True if it was sent.

        Raises ValueError only for a malformed message (a programming error): a key that is not an upper-case name,
        or a value containing a newline.  A failure to send is logged once and returns False.
        """
        lines = []
        for key, value in fields.items():
            text = str(value)
            if not key.replace("_", "").isalnum() or not key.isupper():
                raise ValueError(f"sd_notify field name must be upper case: {key!r}")
            if "\n" in text:
                raise ValueError(f"sd_notify value for {key} contains a newline")
            lines.append(f"{key}={text}")
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
        except OSError as exc:
            self._warn(f"sd_notify to {self._address!r} failed: {exc}")
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s (further sd_notify failures are not logged)", message)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``WATCHDOG_USEC``; None when no watchdog is asked of this process.

    ``WATCHDOG_PID``, when set, must be this process's pid (otherwise the variable was meant for a parent).
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
