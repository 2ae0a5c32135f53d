"""Every file odal writes is written aside and renamed: readers see the old content or the new, never a part."""

from __future__ import annotations

import pytest

from odal.daemon.system.atomic import atomic_path, atomic_write, atomic_write_text, publish_dir, remove_tree


def test_a_write_that_fails_midway_leaves_the_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_writer_given_a_name_publishes_only_when_it_finishes(tmp_path):
    target = tmp_path / "train.record"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"records")
        assert not target.exists() and tmp.parent == target.parent
    assert target.read_bytes() == b"records"


def test_a_folder_is_published_in_one_rename_and_never_over_an_existing_one(tmp_path):
    staging = tmp_path / ".staging"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"pb")
    publish_dir(staging, tmp_path / "1")
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"pb" and not staging.exists()
    (tmp_path / ".again").mkdir()
    with pytest.raises(FileExistsError):
        publish_dir(tmp_path / ".again", tmp_path / "1")
    remove_tree(tmp_path / "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".again"]
