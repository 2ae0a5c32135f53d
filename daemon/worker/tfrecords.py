"""Stage 1 of a round: accepted annotations -> OD API TFRecords (train and eval), in a folder it is given."""

from __future__ import annotations

import io
import json
from pathlib import Path

import tensorflow as tf
from PIL import Image

from odal.daemon.system.atomic import atomic_path

_KEEP_FORMATS = {"JPEG": b"jpeg", "PNG": b"png"}


def _feature(values, kind):
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encoded_image(path: str) -> tuple[bytes, bytes, int, int]:
    """(encoded bytes, format, width, height); formats other than JPEG/PNG are re-encoded as JPEG."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format
        width, height = image.size
        if fmt not in _KEEP_FORMATS:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue(), b"jpeg", width, height
    return data, _KEEP_FORMATS[fmt], width, height


def example_for(annotation: dict) -> tf.train.Example:
    """One tf.Example in the OD API's standard feature layout; boxes are already normalised [0, 1]."""
    encoded, fmt, width, height = encoded_image(annotation["image_path"])
    boxes = annotation["boxes"]
    key = str(annotation["input_hash"]).encode()
    features = {
        "image/encoded": _feature([encoded], "bytes"),
        "image/format": _feature([fmt], "bytes"),
        "image/height": _feature([height], "int"),
        "image/width": _feature([width], "int"),
        "image/filename": _feature([Path(annotation["image_path"]).name.encode()], "bytes"),
        "image/source_id": _feature([key], "bytes"),
        "image/key/sha256": _feature([key], "bytes"),
        "image/object/bbox/xmin": _feature([b["xmin"] for b in boxes], "float"),
        "image/object/bbox/ymin": _feature([b["ymin"] for b in boxes], "float"),
        "image/object/bbox/xmax": _feature([b["xmax"] for b in boxes], "float"),
        "image/object/bbox/ymax": _feature([b["ymax"] for b in boxes], "float"),
        "image/object/class/text": _feature([b["label"].encode() for b in boxes], "bytes"),
        "image/object/class/label": _feature([b["label_id"] for b in boxes], "int"),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def write_records(annotations_jsonl: Path, out_dir: Path) -> dict:
    """Write ``train.record`` and ``eval.record`` for the annotations listed (one JSON object a line, with split)."""
    counts = {"train": 0, "eval": 0}
    with atomic_path(out_dir / "train.record") as train_tmp, atomic_path(out_dir / "eval.record") as eval_tmp:
        with tf.io.TFRecordWriter(str(train_tmp)) as train, tf.io.TFRecordWriter(str(eval_tmp)) as evaluation:
            writers = {"train": train, "eval": evaluation}
            with open(annotations_jsonl, encoding="utf-8") as lines:
                for line in lines:
                    annotation = json.loads(line)
                    writers[annotation["split"]].write(example_for(annotation).SerializeToString())
                    counts[annotation["split"]] += 1
    return counts
