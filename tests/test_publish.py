"""Publishing: only complete exports become numbered versions; numbers only grow; a crash leaves no half version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from odal.common.errors import PublishError
from odal.daemon.rounds import publish
from odal.daemon.rounds.contracts import Progress, RoundJob, decode, encode
from odal.daemon.store.history import History


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "ledger.sqlite")
    yield h
    h.close()


def _fake_export(folder):
    """A folder with the files TF Serving needs to see (content irrelevant to publishing itself)."""
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    return folder


def test_complete_export_is_renamed_to_the_next_version_with_odal_marker(tmp_path, history):
    base = tmp_path / "models"
    staging = _fake_export(publish.staging_dir(base, 4))
    version, path = publish.publish(staging, base, history, round_id=4, metrics={"mAP": 0.5})
    assert (version, path) == (1, base / "1")
    assert not staging.exists()
    assert json.loads((path / "assets.extra" / "odal.json").read_text())["round"] == 4
    assert history.versions() == []  # recorded by the orchestration (rounds/round.py), not here


def test_incomplete_export_is_refused_and_no_version_appears(tmp_path, history):
    base = tmp_path / "models"
    staging = publish.staging_dir(base, 1)
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"pb")  # no variables.index: the export did not finish
    with pytest.raises(PublishError, match="incomplete"):
        publish.publish(staging, base, history, round_id=1, metrics=None)
    assert publish.version_dirs(base) == {}


def test_version_numbers_only_grow_even_after_retention_deleted_the_newest(tmp_path, history):
    base = tmp_path / "models"
    for round_id in (1, 2, 3):
        version, path = publish.publish(_fake_export(publish.staging_dir(base, round_id)), base, history, round_id,
                                        None)
        history.record_version(version, round_id, path, None, "published")  # as rounds/round.py does
    assert publish.prune_versions(base, keep=1) == [1, 2]
    shutil.rmtree(base / "3")  # even with every folder gone, a new version never reuses a number
    version, _ = publish.publish(_fake_export(publish.staging_dir(base, 4)), base, history, 4, None)
    assert version == 4


def test_recover_removes_staging_leftovers_and_records_an_unrecorded_version(tmp_path, history):
    base = tmp_path / "models"
    _fake_export(publish.staging_dir(base, 9))  # crashed mid-export
    orphan = _fake_export(base / "5")  # renamed into place, crash before the history row was written
    (orphan / "assets.extra").mkdir()
    (orphan / "assets.extra" / "odal.json").write_text(json.dumps({"round": 3, "version": 5, "metrics": None}))
    round_id = history.start_round(seq=1)
    publish.recover(base, history)
    assert sorted(p.name for p in base.iterdir()) == ["5"]
    assert [v["version"] for v in history.versions()] == [5]
    assert publish.next_version(base, history) == 6
    assert round_id == 1


@pytest.mark.slow
def test_a_worker_killed_mid_export_never_produces_a_numbered_folder(tmp_path, tiny_models):
    """SIGKILL the real worker while it writes the SavedModel: only the ignorable staging folder exists."""
    base = tmp_path / "models"
    base.mkdir()
    staging = publish.staging_dir(base, 1)
    round_dir = tmp_path / "round"
    round_dir.mkdir()
    shutil.copy(tiny_models["dir"] / "round" / "annotations.jsonl", round_dir / "annotations.jsonl")
    from conftest import TINY_CONFIG

    job = RoundJob(round_id=1, round_dir=round_dir, pipeline_config=TINY_CONFIG, label_map=tiny_models["label_map"],
                   num_classes=2, steps=2, init_checkpoint=tiny_models["checkpoints"][1],
                   checkpoint_dir=tmp_path / "ckpt", export_dir=staging)
    proc = subprocess.Popen([sys.executable, "-m", "odal.daemon.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    proc.stdin.write(encode(job))
    proc.stdin.flush()
    for line in proc.stdout:
        if decode(line) == Progress(1, "export"):
            break
    deadline = time.monotonic() + 120
    while not staging.exists() and time.monotonic() < deadline:  # wait until the export is being written
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging.exists(), "the export had started"
    assert publish.version_dirs(base) == {}, "nothing TF Serving would load"
    history = History(tmp_path / "ledger.sqlite")
    publish.recover(base, history)
    history.close()
    assert list(base.iterdir()) == []
