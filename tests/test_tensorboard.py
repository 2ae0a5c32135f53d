"""What a round writes for TensorBoard (``work/tensorboard``): the learning rate, each loss component, the eval
metrics and eval images with the model's and the annotators' boxes side by side."""

from __future__ import annotations

import io
from pathlib import Path


def _summaries(folder: Path) -> dict[str, tuple[str, list]]:
    """tag -> (plugin, [tensor values]) of every event file under ``folder``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator

    found: dict[str, tuple[str, list]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = event_accumulator.EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
            values = found.setdefault(tag, (plugin, []))[1]
            values.extend(event.tensor_proto for event in accumulator.Tensors(tag))
    return found


def test_rounds_log_the_learning_rate_each_loss_component_and_eval_images(tiny_models):
    from PIL import Image
    from tensorboard.util import tensor_util

    root = tiny_models["dir"] / "tensorboard"
    train = _summaries(root / "train")
    assert {"learning_rate", "loss/total", "loss/localization_loss", "loss/classification_loss",
            "loss/regularization_loss"} <= set(train), sorted(train)
    assert len(train["loss/localization_loss"][1]) == 4  # 20 steps a round, logged every 10th step, two rounds
    evaluated = _summaries(root / "eval")
    images = {tag: values for tag, (plugin, values) in evaluated.items() if plugin == "images"}
    assert any(tag.startswith("eval_side_by_side") for tag in images), sorted(evaluated)
    encoded = tensor_util.make_ndarray(next(iter(images.values()))[0])  # [width, height, png...]
    with Image.open(io.BytesIO(encoded[2])) as picture:
        width, height = picture.size
    assert width >= 2 * height  # two copies of a 192x160 image: detections left, annotators' boxes right
    assert any("Precision/mAP" in tag for tag in evaluated)
