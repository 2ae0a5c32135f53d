"""Test helpers: a real workspace and a real ``odal-daemon`` child process (no stand-ins)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from odal.daemon import datasets
from odal.daemon.demo import write_workspace
from odal.daemon.history import History


def make_workspace(root: Path, data_dir: Path, labels: list[str], steps: int = 20, per_round: int = 8,
                   keep_versions: int = 3, serving_address: str = "") -> Path:
    config = write_workspace(root, data_dir, labels, steps, per_round, serving_address)
    text = config.read_text().replace("versions = 3", f"versions = {keep_versions}")
    config.write_text(text)
    return config


def append_records(export: Path, records: list[dict]) -> None:
    export.parent.mkdir(parents=True, exist_ok=True)
    with open(export, "a", encoding="utf-8") as out:
        out.write("".join(json.dumps(r) + "\n" for r in records))
        out.flush()
        os.fsync(out.fileno())


def records_for(items: list[datasets.GroundTruth], data_dir: Path, answer: str = "accept") -> list[dict]:
    return [datasets.prodigy_record(item, str(item.image.relative_to(data_dir)), answer) for item in items]


class DaemonProcess:
    """``python -m odal.daemon --config FILE`` in its own session; its JSON log lines are read from a file."""

    def __init__(self, config: Path):
        self.config = config
        self.workspace = config.parent
        self.log_path = self.workspace / "daemon.stderr.jsonl"
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # events of this run only
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "odal.daemon", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), start_new_session=True,
        )
        self.wait_for_event("daemon_started", timeout=60)
        return self

    def events(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        out = []
        with open(self.log_path, "rb") as handle:
            handle.seek(getattr(self, "_offset", 0))
            text = handle.read().decode(errors="replace")
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for_event(self, name: str, timeout: float, count: int = 1, **fields) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [e for e in self.events() if e.get("event") == name
                       and all(e.get(k) == v for k, v in fields.items())]
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode} while waiting for {name}:\n"
                                     + self.log_path.read_text()[-4000:])
            time.sleep(0.2)
        raise AssertionError(f"no {name} {fields} within {timeout} s:\n" + self.log_path.read_text()[-4000:])

    def rounds(self) -> list[dict]:
        history = History(self.workspace / "work" / "ledger.sqlite", readonly=True)
        try:
            return history.rounds(100)
        finally:
            history.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError("daemon did not stop within the timeout") from None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
