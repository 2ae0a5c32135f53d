"""Workspace lock: real processes holding, contending for, and dying with the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from odal.common.errors import WorkspaceLocked
from odal.daemon.system.lock import LOCK_NAME, WorkspaceLock, read_owner

HOLDER = """
import sys
from odal.daemon.system.lock import WorkspaceLock
with WorkspaceLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a real process that holds the workspace lock until its stdin closes (or it is killed)."""
    procs = []

    def start(work_dir=tmp_path):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(work_dir)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "locked\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()


def test_second_acquirer_is_refused_with_the_owners_pid_and_host(tmp_path, holder):
    """While another process holds the workspace, acquiring raises WorkspaceLocked naming its pid and host."""
    proc = holder()
    with pytest.raises(WorkspaceLocked) as raised:
        WorkspaceLock(tmp_path).acquire()
    message = str(raised.value)
    assert f"pid {proc.pid}" in message and "this host" in message and str(tmp_path) in message
    assert raised.value.exit_code == 3


def test_read_owner_reports_the_running_holder(tmp_path, holder):
    """read_owner returns the holder's pid, host and start time while it runs."""
    proc = holder()
    owner = read_owner(tmp_path)
    assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname() and owner["started"]


def test_owner_record_is_plain_json_in_the_lock_file(tmp_path):
    """The lock file holds the owner as JSON, readable by anyone without the lock module."""
    with WorkspaceLock(tmp_path) as lock:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record == lock.owner and record["pid"] == os.getpid()


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder):
    """After the holder is SIGKILLed (no cleanup at all), a new daemon takes the lock and records itself."""
    proc = holder()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid  # stale record still there
    assert read_owner(tmp_path) is None
    with WorkspaceLock(tmp_path) as lock:
        assert lock.previous_owner["pid"] == proc.pid
        assert read_owner(tmp_path)["pid"] == os.getpid()


def test_a_holder_that_exits_cleanly_frees_the_workspace(tmp_path, holder):
    """A holder leaving its with-block releases the lock and clears its record; the file stays."""
    proc = holder()
    proc.stdin.close()
    assert proc.stdout.readline() == "released\n"
    proc.wait(timeout=10)
    assert read_owner(tmp_path) is None
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with WorkspaceLock(tmp_path) as lock:
        assert lock.previous_owner is None


def test_two_locks_in_one_process_also_exclude_each_other(tmp_path):
    """Two lock objects on one workspace conflict even in the same process (separate open files)."""
    with WorkspaceLock(tmp_path):
        with pytest.raises(WorkspaceLocked, match=f"pid {os.getpid()}"):
            WorkspaceLock(tmp_path).acquire()


def test_other_workspaces_are_independent(tmp_path, holder):
    """A lock on one workspace does not block another workspace."""
    holder(tmp_path / "a")
    with WorkspaceLock(tmp_path / "b") as lock:
        assert lock.held


def test_release_is_idempotent_and_the_lock_can_be_taken_again(tmp_path):
    """release() twice is harmless; the same object can acquire again afterwards."""
    lock = WorkspaceLock(tmp_path)
    lock.acquire()
    lock.release()
    lock.release()
    assert not lock.held and read_owner(tmp_path) is None
    with lock:
        assert read_owner(tmp_path)["pid"] == os.getpid()


def test_acquiring_twice_on_one_object_is_a_programming_error(tmp_path):
    """A held lock object refuses a second acquire instead of deadlocking or double-opening."""
    with WorkspaceLock(tmp_path) as lock:
        with pytest.raises(RuntimeError):
            lock.acquire()


def test_read_owner_without_a_lock_file_is_none_and_creates_nothing(tmp_path):
    """read_owner on a fresh workspace returns None and leaves no file behind."""
    assert read_owner(tmp_path) is None
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_not_inherited_by_exec(tmp_path):
    """The lock fd is close-on-exec, so an exec'd worker child never keeps the workspace locked."""
    with WorkspaceLock(tmp_path) as lock:
        assert not os.get_inheritable(lock.fileno())
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
    try:
        with WorkspaceLock(tmp_path):
            pass
    finally:
        child.kill()
        child.wait(timeout=10)


def test_status_probes_do_not_make_a_starting_daemon_fail(tmp_path):
    """read_owner polling in another process never makes acquire() report a phantom owner."""
    poller = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom odal.daemon.system.lock import read_owner\n"
         "end = time.monotonic() + 20\n"
         "while time.monotonic() < end: read_owner(sys.argv[1])\n", str(tmp_path)])
    try:
        time.sleep(0.3)
        for _ in range(50):
            with WorkspaceLock(tmp_path):
                pass
    finally:
        poller.kill()
        poller.wait(timeout=10)


def test_a_second_daemon_started_meanwhile_is_refused_while_the_first_runs(tmp_path):
    """Two processes racing to start: exactly one wins, the other gets WorkspaceLocked."""
    script = (
        "import sys\nfrom odal.daemon.system.lock import WorkspaceLock\nfrom odal.common.errors import WorkspaceLocked\n"
        "try:\n    lock = WorkspaceLock(sys.argv[1]); lock.acquire()\n"
        "except WorkspaceLocked:\n    print('refused', flush=True); sys.exit(3)\n"
        "print('won', flush=True); sys.stdin.read()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        outcomes = sorted(proc.stdout.readline().strip() for proc in procs)
        assert outcomes == ["refused", "refused", "won"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdin.close()
            proc.stdout.close()
