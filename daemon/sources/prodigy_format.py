"""Prodigy ``image.manual`` records as odal values: parse them, locate and check their image.

Pure functions (no TensorFlow, no database).  Every problem with one record is an
:class:`~odal.common.errors.InvalidRecord` whose message says what is wrong and where (span, label, path), so the
ingest can set that record aside and go on.

* :func:`parse_record` turns one ``db-out`` object into an :class:`Annotation` with normalised, clipped
  :class:`Box` values (min/max over each span's ``points``: rects, polygons and freehand alike).
* :func:`open_image` finds the image the record names (a path inside ``data_dir``, a
  ``data:`` URI stored once as a blob, or ``meta.file``) and check that it decodes.

Values from a record are bounded (:mod:`odal.daemon.sources.limits`) and shown shortened in messages.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from odal.common.errors import InvalidRecord
from odal.daemon.sources.images import ImageFile, locate
from odal.daemon.sources.limits import MAX_DIMENSION, MAX_HASH_DIGITS, MAX_SHOWN_CHARS, MAX_SPANS

ANSWERS = ("accept", "reject", "ignore")


@dataclass(frozen=True)
class Box:
    """One object: its label and corners as fractions of the image size, in [0, 1], xmin < xmax, ymin < ymax."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def as_dict(self) -> dict:
        return {"label": self.label, "xmin": self.xmin, "ymin": self.ymin, "xmax": self.xmax, "ymax": self.ymax}


@dataclass(frozen=True)
class Annotation:
    """One answered task. ``boxes`` is empty for ``reject``/``ignore`` and for an accepted image without objects."""

    input_hash: str
    task_hash: str | None
    timestamp: float
    answer: str
    image_ref: str
    width: int | None
    height: int | None
    boxes: tuple[Box, ...]
    meta_file: str | None
    annotator: str | None


# --------------------------------------------------------------------------------------------------- records


def parse_record(obj: dict, labels: Collection[str]) -> Annotation:
    """The :class:`Annotation` of one ``db-out`` object; raises :class:`InvalidRecord` naming every problem of the
    record in one message (each bad field and each bad span), so that it is fixed in one go."""
    if not isinstance(obj, dict):
        raise InvalidRecord(f"record is not a JSON object but {type(obj).__name__}")
    problems: list[str] = []

    def check(read, *args):
        try:
            return read(*args)
        except InvalidRecord as error:
            problems.append(str(error))
            return None

    input_hash = check(_hash, obj, "_input_hash", True)
    task_hash = check(_hash, obj, "_task_hash", False)
    timestamp = check(_timestamp, obj.get("_timestamp"))
    answer = obj.get("answer")
    if not isinstance(answer, str) or answer not in ANSWERS:
        problems.append(f"answer must be one of {', '.join(ANSWERS)}, not {_show(answer)}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    meta_file = meta.get("file") if isinstance(meta.get("file"), str) and meta.get("file") else None
    image_ref = check(_image_ref, obj, meta_file)
    before = len(problems)
    width, height = check(_dimension, obj, "width"), check(_dimension, obj, "height")
    dimensions_bad = len(problems) > before
    spans = obj.get("spans")
    if spans is None:
        spans = []
    if not isinstance(spans, list):
        problems.append(f"spans must be a list, not {type(spans).__name__}")
        spans = []
    elif len(spans) > MAX_SPANS:
        problems.append(f"too many spans ({len(spans)} > {MAX_SPANS})")
        spans = []
    boxes: list[Box | None] = []
    if answer == "accept" and spans:  # only accepted boxes are trained on; a rejected suggestion's spans are not
        if width is None or height is None:
            if not dimensions_bad:
                problems.append("an accepted record with spans needs width and height > 0")
        else:
            for index, span in enumerate(spans):
                if len(problems) >= _SHOWN_PROBLEMS:  # a million bad spans: bounded time and message
                    problems.append(f"spans {index} to {len(spans) - 1} not checked")
                    break
                boxes.append(check(_box, span, index, labels, width, height))
    if problems:
        raise InvalidRecord("; ".join(problems), input_hash=input_hash)
    annotator = obj.get("_annotator_id") or obj.get("_session_id")
    return Annotation(
        input_hash=input_hash, task_hash=task_hash, timestamp=timestamp, answer=answer, image_ref=image_ref,
        width=width, height=height, boxes=tuple(boxes), meta_file=meta_file,
        annotator=annotator[:MAX_SHOWN_CHARS] if isinstance(annotator, str) else None,
    )


_SHOWN_PROBLEMS = 20
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_SHOWN_CHARS // 2
_REPR.maxlevel = 3


def _show(value: object) -> str:
    """A short repr of a value from a record, for messages (one field can hold megabytes)."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an integer past Python's digit limit for str()
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__


def _hash(obj: dict, key: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRecord(f"{key} must be an integer, not {_show(value)}" if key in obj else f"{key} is missing")
    text = value if isinstance(value, str) else str(value) if abs(value) < 10 ** MAX_HASH_DIGITS else ""
    if not re.fullmatch(rf"-?[0-9]{{1,{MAX_HASH_DIGITS}}}", text):
        raise InvalidRecord(f"{key} must be an integer of at most {MAX_HASH_DIGITS} digits, not {_show(value)}")
    return str(int(text))


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None (not a number, a bool, NaN, infinite, or an integer past a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _timestamp(value: object) -> float:
    if value is None:
        return 0.0
    number = _number(value)
    if number is None:
        raise InvalidRecord(f"_timestamp must be a finite number, not {_show(value)}")
    return number


def _image_ref(obj: dict, meta_file: str | None) -> str:
    for key in ("image", "path"):
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(f"{key} must be a string, not {type(value).__name__}")
    if meta_file:
        return meta_file
    raise InvalidRecord("record has no image (no image, path or meta.file)")


def _dimension(obj: dict, key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    number = _number(value)
    if number is None or not 0 < number <= MAX_DIMENSION:
        raise InvalidRecord(f"{key} must be a number > 0 and <= {MAX_DIMENSION}, not {_show(value)}")
    return max(1, int(round(number)))


def _box(span: object, index: int, labels: Collection[str], width: int, height: int) -> Box:
    if not isinstance(span, dict):
        raise InvalidRecord(f"span {index} is not an object")
    label = span.get("label")
    where = f"span {index} (label {_show(label)})"
    if not isinstance(label, str) or label not in labels:
        raise InvalidRecord(f"{where}: label not in the label set ({', '.join(sorted(labels))})")
    points = span.get("points")
    if not isinstance(points, list) or not points:
        raise InvalidRecord(f"{where}: has no points")
    xs, ys = [], []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in point):
            raise InvalidRecord(f"{where}: point {_show(point)} is not an [x, y] pair of numbers")
        x, y = _number(point[0]), _number(point[1])
        if x is None or y is None:
            raise InvalidRecord(f"{where}: point {_show(point)} is not finite")
        xs.append(x)
        ys.append(y)
    xmin, xmax = _clip(min(xs) / width), _clip(max(xs) / width)
    ymin, ymax = _clip(min(ys) / height), _clip(max(ys) / height)
    if xmax <= xmin or ymax <= ymin:
        raise InvalidRecord(f"{where}: box has zero area inside the {width}x{height} image")
    return Box(label, xmin, ymin, xmax, ymax)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


# ---------------------------------------------------------------------------------------------------- images


def open_image(ann: Annotation, data_dir: Path, blob_dir: Path) -> ImageFile:
    """Locate the record's image and check it decodes, within the limits; raises :class:`InvalidRecord`
    (see :func:`odal.daemon.sources.images.locate`: the one image path, through :mod:`odal.daemon.sources.safe_files`)."""
    return locate(ann.image_ref, ann.meta_file, Path(data_dir), Path(blob_dir))
