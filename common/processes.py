"""Stopping a child started with ``start_new_session=True`` together with whatever it started (its process group)."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL the group of ``process`` and reap it (nothing if it is already gone)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    process.wait()


def stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the group of ``process``, SIGKILL it if ``process`` has not exited after ``timeout`` seconds.
    Nothing if it has already exited."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(process)
    except ProcessLookupError:
        process.wait()
