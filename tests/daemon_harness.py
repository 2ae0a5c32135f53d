"""A real daemon process for tests: a workspace, start, follow its JSON log, kill it (and its worker) hard.

Used by the crash-safety and bad-input tests.  Nothing here is a mock: the daemon is ``python -m odal.daemon``, its
worker is the real TensorFlow child, and every check reads the files and databases the daemon wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from odal.daemon.sources import datasets
from odal.daemon.commands.demo import write_workspace
from odal.daemon.store.history import History


def make_workspace(root: Path, items: list, steps: int = 10, min_new: int = 2, debounce: float = 0.2,
                   eval_fraction: float = 0.0, versions: int = 3, checkpoints: int = 2,
                   serving_address: str = "", base_path: Path | None = None,
                   labels: list[str] | None = None, gate: str | None = "tolerance = 1.0",
                   prewarm: bool = False) -> Path:
    """A workspace whose data dir holds ``items``' images; returns its ``odal.toml``.

    ``gate``: the body of its ``[gate]`` section.  By default every round publishes (tolerance 1.0): tests of other
    things must not depend on whether a few training steps made the model better; None leaves odal's default."""
    data_dir = items[0].image.parent if items else root / "images"
    config = write_workspace(root, data_dir, labels or list(datasets.SHAPE_LABELS), steps, min_new,
                             serving_address)
    text = config.read_text()
    text = re.sub(r"debounce_seconds = .*", f"debounce_seconds = {debounce}", text)
    text = re.sub(r"eval_fraction = .*", f"eval_fraction = {eval_fraction}", text)
    if not prewarm:  # most tests must not pay (nor be slowed by) a worker tracing a model at every daemon start
        text = re.sub(r"(debounce_seconds = .*)", r"\1\nprewarm = false", text)
    text = re.sub(r"versions = .*", f"versions = {versions}", text)
    text = re.sub(r"checkpoints = .*", f"checkpoints = {checkpoints}", text)
    if base_path is not None:
        text = re.sub(r'base_path = .*', f'base_path = "{base_path}"', text)
    if gate is not None:
        text += f"\n[gate]\n{gate}\n"
    config.write_text(text)
    return config


def append_records(path: Path, records: list[dict]) -> None:
    """What ``prodigy db-out`` appending a session does: whole lines, one write, fsynced."""
    with open(path, "a", encoding="utf-8") as out:
        out.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
        out.flush()
        os.fsync(out.fileno())


def odal_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``odal ARGS`` as a user types it, with this interpreter (no need for the venv's bin on PATH)."""
    return subprocess.run([sys.executable, "-c", "import sys; from odal.daemon.cli import main; sys.exit(main())",
                           *args], capture_output=True, text=True, timeout=timeout)


def records_for(items: list, answer: str = "accept") -> list[dict]:
    """``db-out`` records of ``items`` answered ``answer``, image paths relative to their folder (the data dir)."""
    return [datasets.prodigy_record(item, item.image.name, answer) for item in items]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (all its threads)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


class DaemonProcess:
    """``python -m odal.daemon --config CONFIG`` with its log file followed from where this start began."""

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        self.config = Path(config)
        self.env = dict(os.environ, **(env or {}))  # e.g. what systemd sets: NOTIFY_SOCKET, WATCHDOG_USEC
        self.workspace = self.config.parent
        self.log_path = self.workspace / "work" / "logs" / "daemon.jsonl"
        self.proc: subprocess.Popen | None = None
        self._offset = 0
        self._partial = b""
        self.events: list[dict] = []  # events logged since start()

    def start(self) -> "DaemonProcess":
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._partial = b""
        self.events = []
        stderr = open(self.workspace / "daemon.stderr", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "odal.daemon", "--config", str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                     start_new_session=True, cwd=self.workspace, env=self.env)
        stderr.close()
        return self

    def __enter__(self) -> "DaemonProcess":
        self.start()
        if self.wait_event("daemon_started", 60) is None:
            self.stop()
            raise AssertionError("the daemon did not start:\n" + (self.workspace / "daemon.stderr").read_text()[-4000:])
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def rounds(self) -> list[dict]:
        """The history's rounds, oldest first (metrics and timings decoded)."""
        history = History(self.workspace / "work" / "ledger.sqlite", readonly=True)
        try:
            return history.rounds(1000)
        finally:
            history.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_events(self) -> list[dict]:
        """New complete log lines since the last call (also appended to ``self.events``)."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.strip():
                try:
                    new.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
        self.events += new
        return new

    def wait_for(self, predicate, timeout: float, poll: float = 0.02) -> dict | None:
        """The first event (since start) matching ``predicate``; None on timeout or when the daemon exits."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            self.read_events()
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if time.monotonic() >= deadline or not self.alive():
                self.read_events()
                return next((e for e in self.events[seen:] if predicate(e)), None)
            time.sleep(poll)

    def wait_event(self, name: str, timeout: float, **fields) -> dict | None:
        return self.wait_for(lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()),
                             timeout)

    def kill(self) -> list[int]:
        """SIGKILL the daemon and every process below it (the worker runs in its own session); returns the pids.

        The daemon is stopped first (SIGSTOP) so it cannot start a child between listing and killing."""
        if self.proc is None:
            return []
        pid = self.proc.pid
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        family = descendants(pid)
        for victim in [pid, *family]:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        for victim in family:
            _wait_gone(victim)
        return [pid, *family]

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        """Leave nothing running (tests call this in ``finally``)."""
        if self.alive():
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def _wait_gone(pid: int, timeout: float = 10) -> None:
    """A killed grandchild is reaped by init (or us); wait until /proc no longer shows it running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return
        time.sleep(0.02)


def processes_in(folder: Path) -> list[int]:
    """Pids of every process whose working directory is ``folder`` (the daemon and the worker it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(folder):
                    state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state not in ("Z", "X"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def query(db: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    """Read the workspace's ledger database (read-only) the way ``odal status`` does."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
