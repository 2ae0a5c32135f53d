"""Configuration: validated once at start; every problem is one message naming the key, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from odal.daemon import config
from odal.common.errors import ConfigError

BASE = """
[prodigy]
export_dir = "exports"
[paths]
data_dir = "images"
[model]
pipeline_config = "pipeline.config"
label_map = "label_map.pbtxt"
base_path = "models/odal"
"""


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "pipeline.config").write_text("model {}")
    (tmp_path / "label_map.pbtxt").write_text("item { id: 1 name: 'a' }")
    return tmp_path


def _load(workspace: Path, text: str):
    (workspace / "odal.toml").write_text(text)
    return config.load(workspace / "odal.toml")


def test_a_minimal_config_gets_defaults_and_paths_relative_to_the_file(workspace):
    cfg = _load(workspace, BASE)
    assert cfg.export_dir == workspace / "exports" and cfg.base_path == workspace / "models" / "odal"
    assert (cfg.steps_per_round, cfg.min_new_annotations, cfg.keep_versions) == (200, 10, 3)
    assert cfg.model_name == "odal" and cfg.serving_address == ""
    assert (cfg.log_max_bytes, cfg.log_backups) == (64 << 20, 3)


@pytest.mark.parametrize("extra, message", [
    ("[training]\nsteps = 5\n", "training.steps: unknown key"),
    ("[trainig]\n", "trainig: unknown section"),
    ("[training]\nsteps_per_round = 0\n", "training.steps_per_round: must be >= 1"),
    ("[training]\nsteps_per_round = '100'\n", "training.steps_per_round: expected int"),
    ("[training]\neval_fraction = 1.5\n", "training.eval_fraction: must be in [0, 1)"),
    ("[retention]\nversions = 0\n", "retention.versions: must be >= 1"),
    ("[log]\nlevel = 'loud'\n", "log.level"),
    ("[log]\nmax_mb = -1\n", "log.max_mb: must be >= 0"),
    ("[training]\nworker_max_mb = -5\n", "training.worker_max_mb: must be >= 0"),
    ("[log]\nbackups = 1000\n", "log.backups: must be in 0..100"),
    ("[model]\nname = 'a b'\n", "model.name"),
    ("[training]\nstrategy = 'horovod'\n", "training.strategy: default, mirrored, multi_worker"),
    ("[training]\ncpu_devices = -1\n", "training.cpu_devices: must be in 0..64"),
    ("[training]\nworkers = '127.0.0.1:2222'\n", "training.workers: expected a list of strings"),
    ("[training]\nworkers = ['127.0.0.1']\n", "training.workers: each HOST:PORT"),
    ("[training]\nstrategy = 'multi_worker'\nworkers = ['a:1']\n", "training.workers: multi_worker needs at least two"),
    ("[training]\nworkers = ['a:1', 'b:2']\nindex = 2\n", "training.index: must be a place in training.workers"),
    ("[serving]\naddress = 'localhost'\n", "serving.address: HOST:PORT (e.g. 127.0.0.1:8500), got 'localhost'"),
    ("[serving]\naddress = 'localhost:http'\n", "serving.address: HOST:PORT"),
])
def test_a_bad_value_or_unknown_key_is_one_message_naming_the_key(workspace, extra, message):
    text = BASE + extra
    if extra.startswith("[model]"):
        text = text.replace('[model]\n', '[model]\nname = "a b"\n', 1).replace(extra, "")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _load(workspace, text)


def test_missing_files_and_sources_are_named(workspace):
    with pytest.raises(ConfigError, match="model.label_map: no such file"):
        _load(workspace, BASE.replace("label_map.pbtxt", "nope.pbtxt"))
    with pytest.raises(ConfigError, match="paths.data_dir: no such directory"):
        _load(workspace, BASE.replace('"images"', '"missing"'))
    with pytest.raises(ConfigError, match="prodigy: set export_dir"):
        _load(workspace, BASE.replace('export_dir = "exports"', ""))
    with pytest.raises(ConfigError, match="prodigy.dataset: required"):
        (workspace / "prodigy.db").write_bytes(b"")
        _load(workspace, BASE.replace('export_dir = "exports"', 'database = "prodigy.db"'))
    with pytest.raises(ConfigError, match="model.pipeline_config: required"):
        _load(workspace, BASE.replace('pipeline_config = "pipeline.config"', ""))
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(workspace, BASE + "[[[")


def test_the_daemon_reports_a_config_error_in_one_line_and_exit_code_2(workspace):
    (workspace / "odal.toml").write_text(BASE + "[training]\nsteps_per_round = -1\n")
    proc = subprocess.run([sys.executable, "-m", "odal.daemon", "--config", str(workspace / "odal.toml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "training.steps_per_round: must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_multi_worker_config_names_every_worker_and_this_hosts_place(workspace):
    cfg = _load(workspace, BASE + "[training]\nstrategy = 'multi_worker'\nworkers = ['10.0.0.1:2222', "
                "'10.0.0.2:2222']\nindex = 1\n")
    assert (cfg.strategy, cfg.workers, cfg.worker_index) == ("multi_worker", ("10.0.0.1:2222", "10.0.0.2:2222"), 1)
    assert _load(workspace, BASE).strategy == "default"


def test_log_level_is_case_insensitive_and_a_server_address_with_a_port_is_accepted(workspace):
    cfg = _load(workspace, BASE + "[log]\nlevel = 'INFO'\n[serving]\naddress = 'localhost:8500'\n")
    assert (cfg.log_level, cfg.serving_address) == ("info", "localhost:8500")
