"""``odal rollback`` and ``odal restore`` report what a real server (``odal serve``) says afterwards, ``odal status``
shows where a rolled-back version went, and exports are readable by the serving group."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from daemon_harness import make_workspace, odal_cli
from odal.daemon.config import load
from odal.daemon.rounds import publish
from odal.daemon.sources import datasets
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger
from odal.serving.client import ServingClient


def _status_versions(cfg) -> dict:
    proc = odal_cli("status", "--workspace", str(cfg.path.parent), "--json")
    assert proc.returncode == 0, proc.stderr
    return {v["version"]: v for v in json.loads(proc.stdout)["versions"]}


def test_rollback_and_restore_report_what_the_server_serves_and_status_shows_where_the_version_is(tiny_served):
    cfg = tiny_served
    done = odal_cli("rollback", "--workspace", str(cfg.path.parent), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"the server at {cfg.serving_address} serves version 1 (AVAILABLE: 1)" in done.stdout, done.stdout
    versions = _status_versions(cfg)
    assert versions[2]["state"] == "rolled_back"
    assert Path(versions[2]["path"]).parent == cfg.base_path / ".quarantine"  # not the old path any more
    assert Path(versions[2]["path"]).is_dir() and not (cfg.base_path / "2").exists()

    back = odal_cli("restore", "--workspace", str(cfg.path.parent), "2", timeout=300)
    assert back.returncode == 0, back.stderr
    assert f"version 2 restored to {cfg.base_path / '2'}" in back.stdout
    assert f"the server at {cfg.serving_address} serves version 2" in back.stdout, back.stdout
    versions = _status_versions(cfg)
    assert versions[2]["state"] == "published" and versions[2]["path"] == str(cfg.base_path / "2")
    with ServingClient(cfg.serving_address) as client:
        assert client.predict(cfg.model_name, str(next(cfg.data_dir.glob("*.jpg")))).model_version == 2
    assert '"event": "version_restored"' in cfg.log_file.read_text()

    again = odal_cli("restore", "--workspace", str(cfg.path.parent), "2")
    assert again.returncode == 1 and "already in" in again.stderr


def test_rollback_without_a_server_says_it_did_not_ask(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 1)
    cfg = load(make_workspace(tmp_path / "ws", items))
    Ledger(cfg.ledger_path).close()
    history = History(cfg.ledger_path)
    for round_id in (1, 2):
        staging = publish.staging_dir(cfg.base_path, round_id)
        (staging / "variables").mkdir(parents=True)
        (staging / "saved_model.pb").write_bytes(b"pb")
        (staging / "variables" / "variables.index").write_bytes(b"index")
        publish.publish(staging, cfg.base_path, history, round_id, None)
    history.close()
    done = odal_cli("rollback", "--workspace", str(cfg.path.parent))
    assert done.returncode == 0, done.stderr
    assert "the newest version left is 1; not asked: no [serving] address configured" in done.stdout
    assert "now serves" not in done.stdout  # no claim about a server nobody asked
    moved = _status_versions(cfg)[2]
    assert moved["state"] == "rolled_back" and Path(moved["path"]).parent == cfg.base_path / ".quarantine"
    assert odal_cli("restore", "--workspace", str(cfg.path.parent), "7").returncode == 1


def test_a_published_version_is_readable_by_the_serving_group(tmp_path):
    """Under the unit's UMask=0027 the version folder is 0750 and every file, odal's marker included, 0640."""
    old = os.umask(0o027)
    try:
        history = History(tmp_path / "ledger.sqlite")
        staging = publish.staging_dir(tmp_path / "base", 1)
        (staging / "variables").mkdir(parents=True)
        (staging / "saved_model.pb").write_bytes(b"pb")
        (staging / "variables" / "variables.index").write_bytes(b"index")
        _, target = publish.publish(staging, tmp_path / "base", history, 1, None)
        history.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert stat.S_IMODE((target / publish.MARKER).stat().st_mode) == 0o640
    assert stat.S_IMODE((target / publish.MARKER).parent.stat().st_mode) == 0o750
