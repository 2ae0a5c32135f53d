"""Prodigy ``image_manual`` tasks from images and detections, and back to what the database keeps (no Prodigy).

* :func:`read_image` decodes a file once: its bytes (for the task and its hash), size, and the RGB array the
  model is asked about.
* :func:`make_task` builds the task: the image as a data URI, ``path`` for the database, pre-filled rect
  ``spans`` in pixels, and ``meta`` with the scores, the uncertainty and the version that answered.
* :func:`before_db` puts the path back in place of the data URI, so the database stays small and the daemon's
  ingest finds the image (the path is relative to the daemon's data dir when the image is inside it).
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np

from odal.common.hashing import content_hash
from odal.common.images import ImageData
from odal.common.spans import rect_span
from odal.common.uncertainty import uncertainty
from odal.serving.client import Detections


def read_image(path: Path) -> ImageData:
    """The file's bytes and decoded RGB pixels; raises OSError (unreadable) or ValueError (not an image)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, SyntaxError, OSError) as error:
        raise ValueError(f"{path}: not a readable image: {error}") from error
    height, width = pixels.shape[:2]
    return ImageData(path, data, width, height, pixels)


def own_hashes(task: dict, data: bytes) -> dict:
    """Set ``_input_hash`` from the image bytes and ``_task_hash`` from that plus the spans (Prodigy's roles)."""
    spans = json.dumps([[s["label"], s["points"]] for s in task.get("spans", [])], sort_keys=True)
    task["_input_hash"] = content_hash(data)
    task["_task_hash"] = content_hash(f"{task['_input_hash']}:{spans}".encode())
    return task


def data_uri(image: ImageData) -> str:
    mime = mimetypes.guess_type(image.path.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"


def stored_path(path: Path, data_dir: Path | None) -> str:
    """The path the database keeps: relative to ``data_dir`` when the image is inside it, else absolute."""
    resolved = Path(path).resolve()
    if data_dir is not None:
        root = Path(data_dir).resolve()
        if resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix()
    return str(resolved)


def spans_of(detections: Detections, labels: Sequence[str], width: int, height: int,
             threshold: float = 0.0, shown: Collection[str] | None = None) -> list[dict]:
    """Pixel rect spans of the detections scoring at least ``threshold``; ``labels`` is the whole label map by id
    (class id ``k`` is ``labels[k-1]``; ids outside it are dropped), ``shown`` the labels to keep (None: all)."""
    spans = []
    for (ymin, xmin, ymax, xmax), score, cls in zip(detections.boxes, detections.scores, detections.classes):
        if score < threshold or not 1 <= cls <= len(labels):
            continue
        if shown is not None and labels[cls - 1] not in shown:
            continue
        x0, x1 = _clip(xmin) * width, _clip(xmax) * width
        y0, y1 = _clip(ymin) * height, _clip(ymax) * height
        if x1 > x0 and y1 > y0:
            spans.append(rect_span(labels[cls - 1], round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2),
                                   float(score)))
    return spans


def make_task(image: ImageData, data_dir: Path | None) -> dict:
    """The ``image_manual`` task of one image, without suggestions yet (see :func:`add_detections`)."""
    return {"image": data_uri(image), "path": stored_path(image.path, data_dir), "width": image.width,
            "height": image.height, "spans": [], "meta": {"file": image.path.name}}


def add_detections(task: dict, detections: Detections, labels: Sequence[str], threshold: float,
                   shown: Collection[str] | None = None) -> dict:
    """Pre-fill ``spans`` with the detections scoring at least ``threshold`` whose label is ``shown`` (see
    :func:`spans_of`); ``meta`` gets their scores, the image's uncertainty (over all detections) and the model
    version that answered."""
    task["spans"] = spans_of(detections, labels, task["width"], task["height"], threshold, shown)
    task["meta"].update(scores=[span["score"] for span in task["spans"]],
                        uncertainty=round(uncertainty(detections.scores), 4),
                        model_version=int(detections.model_version))
    return task


def before_db(examples: Iterable[dict]) -> list[dict]:
    """Answers as the database should keep them: ``image`` is the path, not the base64 data URI."""
    out = []
    for eg in examples:
        image, path = eg.get("image"), eg.get("path")
        if isinstance(image, str) and image.startswith("data:") and path:
            eg = {**eg, "image": path}
        out.append(eg)
    return out


def _clip(value: float) -> float:
    return min(1.0, max(0.0, float(value)))

