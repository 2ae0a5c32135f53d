"""The pretrained start: the frozen SSDLite graph converted at install time is the same detector in TF2, and a
conversion that misses a weight fails loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from odal.daemon.worker.pretrained import graph_file, install_dir, slim_name


def _frozen_graph_detections(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The package's own model, run as TF1 ran it: the frozen graph in a tf.compat.v1 session."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_file().read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return [tuple(a[0] for a in session.run(["detection_scores:0", "detection_boxes:0"],
                                                {"image_tensor:0": image[np.newaxis]})) for image in images]


def test_exported_converted_model_reproduces_the_frozen_graphs_detections(raccoon, tmp_path):
    assert (install_dir() / "manifest.json").is_file(), "make install converts the pretrained start"
    out = tmp_path / "person"
    proc = subprocess.run([str(Path(sys.executable).parent / "odal"), "pretrained", "export", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "saved_model.pb").is_file() and (out / "variables" / "variables.index").is_file()
    # Real photos at their own sizes (both models resize to 300x300 inside); whether they show people does not
    # matter: the raw top detections of the two must be the same numbers.
    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((raccoon / "images").glob("*.jpg"))[:6]]
    served = tf.saved_model.load(str(out)).signatures["serving_default"]
    score_diff = box_diff = 0.0
    top_score = 0.0
    for image, (scores, boxes) in zip(images, _frozen_graph_detections(images)):
        result = served(input_tensor=tf.constant(image[np.newaxis]))
        assert result["detection_classes"].numpy()[0, 0] == 1  # person, the graph's one class
        score_diff = max(score_diff, float(np.abs(result["detection_scores"].numpy()[0, :10] - scores[:10]).max()))
        box_diff = max(box_diff, float(np.abs(result["detection_boxes"].numpy()[0, :10] - boxes[:10]).max()))
        top_score = max(top_score, float(scores[0]))
    print(f"largest differences over the top 10 detections of {len(images)} images: score {score_diff:.2e}, "
          f"box {box_diff:.2e} (highest score {top_score:.3f})")
    assert top_score > 0.5  # a real detection among them, not only background noise
    assert score_diff < 1e-4 and box_diff < 1e-4


def test_name_mapping_follows_the_slim_names():
    assert slim_name("Conv1/kernel:0") == "FeatureExtractor/MobilenetV2/Conv/weights"
    assert slim_name("block_16_project_BN/moving_variance:0") == \
        "FeatureExtractor/MobilenetV2/expanded_conv_16/project/BatchNorm/moving_variance"
    assert slim_name("expanded_conv_depthwise/depthwise_kernel:0") == \
        "FeatureExtractor/MobilenetV2/expanded_conv/depthwise/depthwise_weights"
    assert slim_name("ssd_mobile_net_v2_keras_feature_extractor_1/FeatureMaps/"
                     "layer_19_2_Conv2d_3_3x3_s2_256_depthwise_batchnorm/beta:0") == \
        "FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_3_3x3_s2_256_depthwise/BatchNorm/beta"
    assert slim_name("BoxPredictor/ConvolutionalClassHead_4/ClassPredictor/bias:0") == \
        "BoxPredictor_4/ClassPredictor/biases"
    assert slim_name("BoxPredictor/ConvolutionalBoxHead_0/BoxEncodingPredictor_depthwise_batchnorm/gamma:0") == \
        "BoxPredictor_0/BoxEncodingPredictor_depthwise/BatchNorm/gamma"
    assert slim_name("global_step:0") is None


# In a child process: the OD API needs its compat module imported before TensorFlow, which this process has.
_BROKEN = """
from odal.daemon.worker import pretrained
constants = pretrained.read_constants(pretrained.graph_file())
model = pretrained.build_model(pretrained.load_configs(1))
del constants["FeatureExtractor/MobilenetV2/expanded_conv_7/expand/BatchNorm/moving_mean"]
constants["BoxPredictor_3/BoxEncodingPredictor/biases"] = constants["BoxPredictor_3/BoxEncodingPredictor/biases"][:4]
try:
    pretrained.fill(model, constants, class_head=True)
except pretrained.ConversionError as error:
    print("ERROR", error)
"""


def test_a_weight_missing_or_of_another_shape_fails_the_conversion_naming_it():
    proc = subprocess.run([sys.executable, "-c", _BROKEN], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = proc.stdout.split("ERROR", 1)[-1]
    assert "1 variables have no constant" in error and "1 have another shape" in error
    assert "block_7_expand_BN/moving_mean" in error and "BoxPredictor_3/BoxEncodingPredictor/biases" in error


def test_install_step_is_idempotent_and_fast_when_already_converted():
    proc = subprocess.run([sys.executable, "-m", "odal.daemon.worker.pretrained", "--install"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "already converted" in proc.stdout, proc.stderr[-2000:]
    assert "tensorflow" not in proc.stderr.lower()  # decided from the manifest, before TensorFlow is imported
