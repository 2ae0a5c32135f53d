"""``odal train-worker`` and its systemd unit: refuses what it cannot join, and the unit (and the chief's drop-in)
pass ``systemd-analyze verify``.  (The train-worker training a round with the chief: test_distributed_rounds.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from daemon_harness import odal_cli
from test_config import BASE  # the smallest valid odal.toml
from test_systemd_unit import VENV, runnable_copy, verify

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "odal-train-worker.service"
DROP_IN = REPO / "systemd" / "odal-daemon.service.d" / "multi-worker.conf"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")



def _workspace(tmp_path: Path, training: str) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "pipeline.config").write_text("model {}")
    (tmp_path / "label_map.pbtxt").write_text("item { id: 1 name: 'a' }")
    (tmp_path / "odal.toml").write_text(BASE + "[training]\n" + training)
    return tmp_path / "odal.toml"


@pytest.mark.parametrize("training, index, message", [
    ("", "1", 'training.strategy: train-worker needs "multi_worker"'),
    ("strategy = 'multi_worker'\nworkers = ['127.0.0.1:1', '127.0.0.1:2']\n", "0", "0 is the chief"),
    ("strategy = 'multi_worker'\nworkers = ['127.0.0.1:1', '127.0.0.1:2']\n", "2", "training.index"),
])
def test_train_worker_refuses_a_place_it_cannot_take_with_exit_code_2(tmp_path, training, index, message):
    proc = odal_cli("train-worker", "--config", str(_workspace(tmp_path, training)), "--index", index)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    text = UNIT.read_text() if text is None else text
    assert "ExecStart=/opt/odal/.venv/bin/odal train-worker " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("/opt/odal/.venv/", f"{VENV}/"))
    return copy


@needs_analyze
def test_train_worker_unit_passes_systemd_analyze_verify(tmp_path):
    verify(_unit_copy(tmp_path))


@needs_analyze
def test_verify_of_the_train_worker_unit_is_not_vacuous(tmp_path):
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystemm=strict")
    with pytest.raises(AssertionError, match="odal-train-worker.service"):
        verify(_unit_copy(tmp_path, broken))


@needs_analyze
def test_the_chiefs_multi_worker_drop_in_passes_verify_with_the_daemon_unit(tmp_path):
    unit = runnable_copy(tmp_path)
    (tmp_path / "odal-daemon.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "odal-daemon.service.d" / DROP_IN.name)
    verify(unit)
    proc = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert DROP_IN.name not in proc.stdout + proc.stderr


def test_the_units_command_line_is_one_the_cli_accepts(tmp_path):
    """ExecStart's arguments, with the unit's defaults filled in, reach train-worker's own checks (a workspace
    that is not multi-worker), not argparse's usage error."""
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    config = _workspace(tmp_path, "")
    args = line.split()[1:]
    args = [str(config) if a == "${ODAL_CONFIG}" else "1" if a == "${ODAL_WORKER_INDEX}" else a for a in args]
    proc = odal_cli(*args)
    assert proc.returncode == 2 and "train-worker needs" in proc.stderr, proc.stderr
