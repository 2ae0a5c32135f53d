"""The export module of every odal SavedModel: the OD API's image module plus one output, ``image_embedding``.

``serving_default`` keeps the OD API's inputs and outputs (uint8 ``input_tensor`` -> ``detection_boxes``,
``detection_scores``, ... as ``exporter_lib_v2.DetectionFromImageModule`` writes them, so TF Serving, the recipe and
any client of a stock export work as before) with one change: the batch dimension is free, [None, H, W, 3] where the
OD API fixes it at 1 (its preprocessing maps over the batch, predict and postprocess take any batch), so a server
with ``--enable_batching`` (TF Serving's or ``odal serve``'s) can run concurrent requests as one call; a request of
one image is answered as before.  It adds ``image_embedding``: float32
[batch, D], the global average (over height and width) of the feature extractor's last feature map -- computed by
the same forward pass as the detections, so it costs a mean over one small tensor.  The daemon's active-learning
queue uses it to pick diverse images (:mod:`odal.common.selection`) without importing TensorFlow itself.

Which map is "last" per meta-architecture (the key of the model's ``predict`` output): SSD and EfficientDet
``feature_maps`` (the coarsest, deepest one), CenterNet ``extracted_features``, Faster R-CNN
``rpn_features_to_crop`` (the backbone map the box classifier crops).  D is that map's channel count: 128 for
odal's SSDLite MobileNetV2, 44 for the tiny SSD (see README).  A model with none of these keys is exported without
the extra output.
"""

from __future__ import annotations

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import tensorflow as tf
from object_detection import exporter_lib_v2
from object_detection.core import standard_fields as fields

EMBEDDING_OUTPUT = "image_embedding"
FEATURE_KEYS = ("feature_maps", "extracted_features", "rpn_features_to_crop")
LABEL_ID_OFFSET = 1  # the model's classes count from 0, the label map's from 1
INPUT = tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")  # the OD API's, batch left free


def last_feature_map(prediction_dict: dict):
    """The feature extractor's last feature map [batch, h, w, c] in a ``predict`` output, or None."""
    for key in FEATURE_KEYS:
        found = prediction_dict.get(key)
        if isinstance(found, (list, tuple)):
            found = found[-1] if found else None
        if found is not None and len(found.shape) == 4:
            return found
    return None


class DetectionWithEmbeddingModule(exporter_lib_v2.DetectionFromImageModule):
    """``DetectionFromImageModule`` whose detections also carry :data:`EMBEDDING_OUTPUT` and whose input's batch
    dimension is free (module docstring)."""

    def __init__(self, detection_model):
        super().__init__(detection_model)
        self.__call__ = tf.function(self.__call__.python_function, input_signature=[INPUT])

    def _run_inference_on_images(self, images, true_shapes, **kwargs):
        predicted = self._model.predict(images, true_shapes, **kwargs)
        features = last_feature_map(predicted)
        outputs = self._model.postprocess(predicted, true_shapes)
        classes = fields.DetectionResultFields.detection_classes
        outputs[classes] = tf.cast(outputs[classes], tf.float32) + LABEL_ID_OFFSET
        outputs = {key: tf.cast(value, tf.float32) for key, value in outputs.items()}
        if features is not None:
            outputs[EMBEDDING_OUTPUT] = tf.reduce_mean(tf.cast(features, tf.float32), axis=[1, 2])
        return outputs
