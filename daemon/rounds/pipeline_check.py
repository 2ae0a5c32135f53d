"""The user's pipeline.config, read and checked once at start (without TensorFlow: only the OD API's protos).

odal honours the OD API's own settings rather than ignoring them:

* ``train_config.fine_tune_checkpoint`` and ``fine_tune_checkpoint_type`` (how every zoo model is configured) are
  where the first round starts from.  odal.toml's ``model.fine_tune_checkpoint`` / ``_type`` override them, and the
  daemon says so in its log.  A relative path is relative to the file that names it (pipeline.config's folder, or
  odal.toml's), and a checkpoint that is not there stops the daemon at start with one message naming the setting.
* Settings that need data odal's records do not hold (odal writes boxes and classes only: no instance masks,
  keypoints, DensePose, tracks or context) stop the daemon at start, naming the setting, instead of failing the
  first train step with an opaque ``GatherV2`` error.
* ``train_config.freeze_variables`` / ``update_trainable_variables`` (honoured by the worker, see
  ``odal.daemon.worker.freeze``) must be regular expressions: one that is not stops the daemon at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from odal.common.errors import ConfigError

# input reader flags -> what odal's records would need to hold for them
_INPUT_NEEDS = {
    "load_instance_masks": "instance masks",
    "load_dense_pose": "DensePose parts",
    "load_track_id": "track ids",
    "load_context_features": "context features",
    "load_keypoint_depth_features": "keypoint depths",
    "load_multiclass_scores": "multiclass scores",
}
# CenterNet tasks -> the ground truth they train on
_CENTER_NET_NEEDS = {
    "keypoint_estimation_task": "keypoints",
    "mask_estimation_task": "instance masks",
    "densepose_estimation_task": "DensePose parts",
    "track_estimation_task": "track ids",
    "temporal_offset_task": "temporal offsets",
    "deepmac_mask_estimation": "instance masks",
}
_ODAL_TYPE_DEFAULT = "detection"  # odal.toml's documented default when it names a checkpoint without a type


@dataclass(frozen=True)
class FineTune:
    """Where the first round starts from, and who said so."""

    checkpoint: str = ""  # absolute checkpoint prefix ("" = from scratch)
    type: str = ""  # fine_tune_checkpoint_type: detection, classification, full, ...
    source: str = ""  # the setting the checkpoint came from
    note: str = ""  # what the odal.toml setting overrode, if anything


def read(path: Path):
    """The pipeline.config at ``path`` as a ``TrainEvalPipelineConfig``; ConfigError naming the file if it is not."""
    from object_detection.protos import pipeline_pb2

    pipeline = pipeline_pb2.TrainEvalPipelineConfig()
    try:
        text_format.Merge(path.read_text(encoding="utf-8"), pipeline)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise ConfigError(f"model.pipeline_config: {path} is not a pipeline config: {error}") from None
    return pipeline


def _checkpoint_exists(prefix: Path) -> bool:
    return Path(f"{prefix}.index").is_file()


def fine_tune(pipeline, pipeline_path: Path, toml_checkpoint: str, toml_type: str, toml_dir: Path) -> FineTune:
    """The effective fine-tune start: odal.toml's if set, else pipeline.config's; checked to exist."""
    train = pipeline.train_config
    if toml_checkpoint:
        prefix = (toml_dir / Path(toml_checkpoint).expanduser()).resolve()
        source = "odal.toml model.fine_tune_checkpoint"
        note = ""
        if train.fine_tune_checkpoint:
            note = f"overrides {pipeline_path.name} train_config.fine_tune_checkpoint {train.fine_tune_checkpoint!r}"
    elif train.fine_tune_checkpoint:
        prefix = (pipeline_path.parent / Path(train.fine_tune_checkpoint).expanduser()).resolve()
        source = f"{pipeline_path} train_config.fine_tune_checkpoint"
        note = ""
    else:
        return FineTune()
    if not _checkpoint_exists(prefix):
        raise ConfigError(f"{source}: no checkpoint at {prefix} ({prefix.name}.index is missing; give the "
                          f"checkpoint's prefix, e.g. DIR/ckpt-0)")
    if toml_type:
        kind = toml_type
        if train.fine_tune_checkpoint_type and train.fine_tune_checkpoint_type != toml_type:
            note = "; ".join(filter(None, [note, f"odal.toml model.fine_tune_checkpoint_type overrides "
                                                 f"{train.fine_tune_checkpoint_type!r}"]))
    elif train.fine_tune_checkpoint_type:
        kind = train.fine_tune_checkpoint_type
    elif train.from_detection_checkpoint:  # the OD API's deprecated spelling (config_util does the same)
        kind = "detection"
    else:  # the OD API's default is classification; odal.toml's has always been detection
        kind = _ODAL_TYPE_DEFAULT if toml_checkpoint else "classification"
    return FineTune(str(prefix), kind, source, note)


def unsupported(pipeline, pipeline_path: Path) -> None:
    """ConfigError naming the first setting that needs data odal's records lack."""
    for reader in ("train_input_reader", "eval_input_reader"):
        configs = getattr(pipeline, reader)
        configs = list(configs) if not hasattr(configs, "ListFields") else [configs]
        for config in configs:
            for flag, needs in _INPUT_NEEDS.items():
                if getattr(config, flag):
                    _refuse(pipeline_path, f"{reader}.{flag}", needs)
            if config.num_additional_channels:
                _refuse(pipeline_path, f"{reader}.num_additional_channels", "additional image channels")
    arch = pipeline.model.WhichOneof("model")
    if arch == "center_net":
        for task, needs in _CENTER_NET_NEEDS.items():
            value = getattr(pipeline.model.center_net, task)
            if (len(value) if not hasattr(value, "ListFields") else value.ByteSize()):
                _refuse(pipeline_path, f"model.center_net.{task}", needs)
    if arch == "faster_rcnn":
        predictor = pipeline.model.faster_rcnn.second_stage_box_predictor
        if predictor.WhichOneof("box_predictor_oneof") == "mask_rcnn_box_predictor":
            if predictor.mask_rcnn_box_predictor.predict_instance_masks:
                _refuse(pipeline_path, "model.faster_rcnn.second_stage_box_predictor.mask_rcnn_box_predictor."
                        "predict_instance_masks", "instance masks")


def _refuse(pipeline_path: Path, setting: str, needs: str) -> None:
    raise ConfigError(f"{pipeline_path}: {setting} needs {needs}, which odal's training records do not hold "
                      f"(boxes and classes only); turn it off or use a box-only model")


def trainable_patterns(pipeline, pipeline_path: Path) -> None:
    """ConfigError naming the first freeze_variables / update_trainable_variables pattern that is not a regex."""
    for setting in ("update_trainable_variables", "freeze_variables"):
        for pattern in getattr(pipeline.train_config, setting):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ConfigError(f"{pipeline_path}: train_config.{setting} {pattern!r} is not a regular "
                                  f"expression: {error}") from error


def input_side(pipeline) -> int | None:
    """The shorter side, in pixels, of the images the model actually looks at (its ``image_resizer``): an image
    sent larger is only resized down by the model itself.  None when the resizer does not say (then images are
    sent at up to 1024 a side)."""
    arch = pipeline.model.WhichOneof("model")
    if arch is None:
        return None
    resizer = getattr(getattr(pipeline.model, arch), "image_resizer", None)
    kind = resizer.WhichOneof("image_resizer_oneof") if resizer is not None else None
    if kind == "fixed_shape_resizer":
        return max(resizer.fixed_shape_resizer.height, resizer.fixed_shape_resizer.width) or None
    if kind == "keep_aspect_ratio_resizer":
        return resizer.keep_aspect_ratio_resizer.min_dimension or None
    return None
