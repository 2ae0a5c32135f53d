"""The pipeline.config's own settings are honoured and checked at start: fine-tune checkpoint and its type (odal.toml
may override them), paths relative to the file naming them, and settings odal's records cannot feed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from odal.daemon import config
from odal.common.errors import ConfigError

TOML = """
[prodigy]
export_dir = "exports"
[paths]
data_dir = "images"
[model]
pipeline_config = "models/pipeline.config"
label_map = "label_map.pbtxt"
base_path = "models/odal"
"""


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "models" / "pretrained").mkdir(parents=True)
    (tmp_path / "models" / "pretrained" / "ckpt-0.index").write_bytes(b"")
    (tmp_path / "label_map.pbtxt").write_text("item { id: 1 name: 'a' }")
    return tmp_path


def _load(workspace: Path, pipeline: str, toml_extra: str = ""):
    (workspace / "models" / "pipeline.config").write_text(pipeline)
    (workspace / "odal.toml").write_text(TOML + toml_extra)
    return config.load(workspace / "odal.toml")


def test_the_pipeline_configs_fine_tune_checkpoint_and_type_are_used_relative_to_its_folder(workspace, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path / "images")  # not the folder a relative path is meant from
    cfg = _load(workspace, 'train_config { fine_tune_checkpoint: "pretrained/ckpt-0" '
                           'fine_tune_checkpoint_type: "full" }')
    assert cfg.fine_tune_checkpoint == str(workspace / "models" / "pretrained" / "ckpt-0")
    assert cfg.fine_tune_checkpoint_type == "full"
    assert "pipeline.config train_config.fine_tune_checkpoint" in cfg.fine_tune.source and not cfg.fine_tune.note


def test_odal_toml_overrides_the_pipeline_configs_checkpoint_and_type_and_says_so(workspace):
    (workspace / "other").mkdir()
    (workspace / "other" / "ckpt-3.index").write_bytes(b"")
    cfg = _load(workspace, 'train_config { fine_tune_checkpoint: "pretrained/ckpt-0" '
                           'fine_tune_checkpoint_type: "classification" }',
                'fine_tune_checkpoint = "other/ckpt-3"\nfine_tune_checkpoint_type = "detection"\n')  # [model]
    assert cfg.fine_tune_checkpoint == str(workspace / "other" / "ckpt-3")
    assert cfg.fine_tune_checkpoint_type == "detection"
    assert "odal.toml" in cfg.fine_tune.source
    assert "'pretrained/ckpt-0'" in cfg.fine_tune.note and "'classification'" in cfg.fine_tune.note


def test_without_a_type_the_od_api_rule_applies(workspace):
    cfg = _load(workspace, 'train_config { fine_tune_checkpoint: "pretrained/ckpt-0" from_detection_checkpoint: true }')
    assert cfg.fine_tune_checkpoint_type == "detection"
    cfg = _load(workspace, 'train_config { fine_tune_checkpoint: "pretrained/ckpt-0" }')
    assert cfg.fine_tune_checkpoint_type == "classification"
    assert _load(workspace, "model {}").fine_tune_checkpoint == ""


def test_a_missing_checkpoint_stops_the_daemon_at_start_with_one_message_naming_the_setting(workspace):
    (workspace / "models" / "pipeline.config").write_text(
        'train_config { fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/checkpoint/ckpt-0" }')
    (workspace / "odal.toml").write_text(TOML)
    proc = subprocess.run([sys.executable, "-m", "odal.daemon", "--config", str(workspace / "odal.toml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "train_config.fine_tune_checkpoint: no checkpoint at" in proc.stderr
    assert "PATH_TO_BE_CONFIGURED/checkpoint/ckpt-0" in proc.stderr and "Traceback" not in proc.stderr
    assert not (workspace / "work" / "ledger.sqlite").exists()


@pytest.mark.parametrize("pipeline, setting", [
    ("train_input_reader { load_instance_masks: true mask_type: PNG_MASKS }",
     "train_input_reader.load_instance_masks"),
    ("eval_input_reader { load_instance_masks: true }", "eval_input_reader.load_instance_masks"),
    ("train_input_reader { num_additional_channels: 1 }", "train_input_reader.num_additional_channels"),
    ("model { center_net { num_classes: 1 keypoint_estimation_task { task_name: 'human_pose' } } }",
     "model.center_net.keypoint_estimation_task"),
    ("model { faster_rcnn { second_stage_box_predictor { mask_rcnn_box_predictor { predict_instance_masks: true } } "
     "} }", "mask_rcnn_box_predictor.predict_instance_masks"),
])
def test_a_setting_that_needs_data_odals_records_lack_is_refused_at_start_by_name(workspace, pipeline, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.") + " needs"):
        _load(workspace, pipeline)


def test_a_pipeline_config_that_does_not_parse_is_a_config_error_naming_the_file(workspace):
    with pytest.raises(ConfigError, match=r"model.pipeline_config: .*pipeline.config is not a pipeline config"):
        _load(workspace, "model { ssd { num_classes: 2 \n this is not")


@pytest.mark.parametrize("setting", ["freeze_variables", "update_trainable_variables"])
def test_a_freeze_pattern_that_is_not_a_regular_expression_is_refused_at_start_by_name(workspace, setting):
    with pytest.raises(ConfigError, match=rf"pipeline.config: train_config.{setting} 'block_\(' is not a regular"):
        _load(workspace, f'train_config {{ {setting}: "Conv1" {setting}: "block_(" }}')
    _load(workspace, f'train_config {{ {setting}: "^block_[0-9]_" }}')  # a good one passes
