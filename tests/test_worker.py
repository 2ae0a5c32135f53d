"""The round worker trains, evaluates and exports a real OD API model, and reuses its session across rounds."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image


def test_two_rounds_export_loadable_savedmodels_that_detect(tiny_models):
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"))[np.newaxis]
    outputs = []
    for version in tiny_models["versions"]:
        assert (version / "saved_model.pb").is_file() and (version / "variables" / "variables.index").is_file()
        model = tf.saved_model.load(str(version))
        result = model.signatures["serving_default"](input_tensor=tf.constant(image))
        assert result["detection_boxes"].shape[-1] == 4
        assert int(result["num_detections"][0]) > 0
        outputs.append(result["detection_scores"].numpy())
    # Round 2 continued from round 1's checkpoint and trained further: the served weights changed.
    assert not np.allclose(outputs[0], outputs[1])


def test_second_round_reuses_the_traced_session_and_continues_the_global_step(tiny_models):
    first, second = tiny_models["results"]
    assert not first["session_reused"] and second["session_reused"]
    assert first["train"]["global_step"] == 20 and second["train"]["global_step"] == 40
    assert first["counts"] == second["counts"] and first["counts"]["eval"] > 0
    assert 0.0 <= second["metrics"]["DetectionBoxes_Precision/mAP"] <= 1.0
