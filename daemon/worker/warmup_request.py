"""Every export carries TF Serving's warm-up file, built from a real annotated image of its round.

TF Serving (and ``odal serve``) replays ``assets.extra/tf_serving_warmup_requests`` when it loads a version and
marks it AVAILABLE only afterwards, so neither the daemon's confirmation nor the annotators' first request after a
hot reload pays the graph's first run (``serving/warmup.py`` writes and replays the file).  The image is the first
one of the round's ``train.record`` (the data dir is not read again), shrunk to at most 1024 pixels a side as the
active-learning queue sends them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from odal.serving import warmup

MAX_SIDE = 1024


def first_image(train_record: Path) -> np.ndarray:
    """The record file's first image as uint8 [H, W, 3], at most ``MAX_SIDE`` a side."""
    for raw in tf.data.TFRecordDataset(str(train_record)).take(1).as_numpy_iterator():
        encoded = tf.train.Example.FromString(raw).features.feature["image/encoded"].bytes_list.value[0]
        with Image.open(io.BytesIO(encoded)) as image:
            image = image.convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE))
            return np.asarray(image, dtype=np.uint8)
    raise ValueError(f"{train_record} holds no image")


def add_to_export(export_dir: Path, train_record: Path) -> str:
    """Write the warm-up file into ``export_dir`` (not published yet); its path relative to the export."""
    return str(warmup.write(export_dir, first_image(train_record)).relative_to(export_dir))
