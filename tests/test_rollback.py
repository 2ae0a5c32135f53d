"""``odal rollback`` moves a version out of serving in one rename, records it, and never lets numbers go back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon_harness import make_workspace, odal_cli
from odal.daemon.sources import datasets
from odal.daemon.config import load
from odal.daemon.rounds import publish
from odal.daemon.commands.rollback import RollbackError, rollback
from odal.daemon.store.history import History


def _publish(cfg, history: History, round_id: int) -> int:
    staging = publish.staging_dir(cfg.base_path, round_id)
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"pb %d" % round_id)
    (staging / "variables" / "variables.index").write_bytes(b"index")
    version, path = publish.publish(staging, cfg.base_path, history, round_id, {"mAP": 0.1 * round_id})
    history.record_version(version, round_id, path, {"mAP": 0.1 * round_id}, "published")  # as rounds/round.py does
    return version


@pytest.fixture
def cfg(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 1)
    cfg = load(make_workspace(tmp_path / "ws", items))
    history = History(cfg.ledger_path)
    for round_id in (1, 2, 3):
        _publish(cfg, history, round_id)
    history.close()
    return cfg


def test_rollback_moves_the_newest_version_to_quarantine_and_records_it(cfg):
    done = rollback(cfg)
    assert (done["version"], done["serving"]) == (3, 2)
    assert Path(done["moved_to"]).parent == cfg.base_path / ".quarantine"
    assert Path(done["moved_to"]).name.startswith("3-")
    assert sorted(publish.version_dirs(cfg.base_path)) == [1, 2]
    assert (Path(done["moved_to"]) / "saved_model.pb").read_bytes() == b"pb 3"
    history = History(cfg.ledger_path)
    try:
        states = {v["version"]: v["state"] for v in history.versions()}
        assert states == {1: "published", 2: "published", 3: "rolled_back"}
        assert publish.next_version(cfg.base_path, history) == 4  # numbers never go back
    finally:
        history.close()


def test_rollback_of_a_named_version_leaves_the_others(cfg):
    assert rollback(cfg, 2)["serving"] == 3
    assert sorted(publish.version_dirs(cfg.base_path)) == [1, 3]


def test_rollback_refuses_the_last_version_without_force(cfg):
    rollback(cfg)
    rollback(cfg)
    with pytest.raises(RollbackError, match="only version"):
        rollback(cfg)
    assert rollback(cfg, force=True)["serving"] is None
    assert publish.version_dirs(cfg.base_path) == {}


def test_rollback_of_a_missing_version_names_the_present_ones(cfg):
    with pytest.raises(RollbackError, match="present: 1, 2, 3"):
        rollback(cfg, 7)


def test_the_cli_rolls_back_and_reports_what_is_left_and_exits_1_on_refusal(cfg):
    result = odal_cli("rollback", "--workspace", str(cfg.path.parent))
    assert result.returncode == 0 and "the newest version left is 2" in result.stdout, result.stderr
    assert '"event": "version_rolled_back"' in cfg.log_file.read_text()
    assert odal_cli("rollback", "--workspace", str(cfg.path.parent), "9").returncode == 1
