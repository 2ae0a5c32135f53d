"""Prodigy ``image.manual`` records as odal values: parse, locate the image, read the label map.

Pure functions (no TensorFlow, no database).  Every problem with one record is an
:class:`~odal.daemon.errors.InvalidRecord` whose message says what is wrong and where (span, label, path), so the
ingest can set that record aside and go on.

* :func:`parse_record` turns one ``db-out`` object into an :class:`Annotation` with normalised, clipped
  :class:`Box` values (min/max over each span's ``points``: rects, polygons and freehand alike).
* :func:`open_image` / :func:`resolve_image` find the image the record names (a path inside ``data_dir``, a
  ``data:`` URI stored once as a blob, or ``meta.file``) and check that it decodes.
* :func:`load_label_map` reads an OD API ``label_map.pbtxt`` without importing TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from odal.daemon.errors import ConfigError, InvalidRecord
from odal.daemon.images import ImageFile, locate

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
    """The :class:`Annotation` of one ``db-out`` object; raises :class:`InvalidRecord` naming what is wrong."""
    if not isinstance(obj, dict):
        raise InvalidRecord(f"record is not a JSON object but {type(obj).__name__}")
    input_hash = _hash(obj, "_input_hash", required=True)
    task_hash = _hash(obj, "_task_hash", required=False)
    timestamp = _timestamp(obj.get("_timestamp"))
    answer = obj.get("answer")
    if answer not in ANSWERS:
        raise InvalidRecord(f"answer must be one of {', '.join(ANSWERS)}, not {answer!r}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    meta_file = meta.get("file") if isinstance(meta.get("file"), str) and meta.get("file") else None
    image_ref = _image_ref(obj, meta_file)
    width, height = _dimension(obj, "width"), _dimension(obj, "height")
    spans = obj.get("spans")
    if spans is None:
        spans = []
    if not isinstance(spans, list):
        raise InvalidRecord(f"spans must be a list, not {type(spans).__name__}")
    boxes: tuple[Box, ...] = ()
    if answer == "accept" and spans:  # only accepted boxes are trained on; a rejected suggestion's spans are not
        if width is None or height is None:
            raise InvalidRecord("an accepted record with spans needs width and height > 0")
        boxes = tuple(_box(span, index, labels, width, height) for index, span in enumerate(spans))
    annotator = obj.get("_annotator_id") or obj.get("_session_id")
    return Annotation(
        input_hash=input_hash, task_hash=task_hash, timestamp=timestamp, answer=answer, image_ref=image_ref,
        width=width, height=height, boxes=boxes, meta_file=meta_file,
        annotator=str(annotator) if annotator is not None else None,
    )


def _hash(obj: dict, key: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRecord(f"{key} must be an integer, not {value!r}" if key in obj else f"{key} is missing")
    if isinstance(value, str):
        if not re.fullmatch(r"-?[0-9]+", value):
            raise InvalidRecord(f"{key} must be an integer, not {value!r}")
        return str(int(value))
    return str(value)


def _timestamp(value: object) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRecord(f"_timestamp must be a finite number, not {value!r}")
    return float(value)


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidRecord(f"{key} must be a number > 0, not {value!r}")
    return int(round(value))


def _box(span: object, index: int, labels: Collection[str], width: int, height: int) -> Box:
    if not isinstance(span, dict):
        raise InvalidRecord(f"span {index} is not an object")
    label = span.get("label")
    where = f"span {index} (label {label!r})"
    if not isinstance(label, str) or label not in labels:
        raise InvalidRecord(f"{where}: label not in the label set ({', '.join(sorted(labels))})")
    points = span.get("points")
    if not isinstance(points, list) or not points:
        raise InvalidRecord(f"{where}: has no points")
    xs, ys = [], []
    for point in points:
        if (not isinstance(point, (list, tuple)) or len(point) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in point)):
            raise InvalidRecord(f"{where}: point {point!r} is not an [x, y] pair of numbers")
        if not all(math.isfinite(v) for v in point):
            raise InvalidRecord(f"{where}: point {point!r} is not finite")
        xs.append(point[0])
        ys.append(point[1])
    xmin, xmax = _clip(min(xs) / width), _clip(max(xs) / width)
    ymin, ymax = _clip(min(ys) / height), _clip(max(ys) / height)
    if xmax <= xmin or ymax <= ymin:
        raise InvalidRecord(f"{where}: box has zero area inside the {width}x{height} image")
    return Box(label, xmin, ymin, xmax, ymax)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


# ---------------------------------------------------------------------------------------------------- images


def resolve_image(ann: Annotation, data_dir: Path, blob_dir: Path) -> Path:
    """The local file of the record's image; see :func:`open_image`."""
    return open_image(ann, data_dir, blob_dir).path


def open_image(ann: Annotation, data_dir: Path, blob_dir: Path) -> ImageFile:
    """Locate the record's image and check it decodes, within the limits; raises :class:`InvalidRecord`
    (see :func:`odal.daemon.images.locate`: the one image path, through :mod:`odal.daemon.safe_files`)."""
    return locate(ann.image_ref, ann.meta_file, Path(data_dir), Path(blob_dir))


# ------------------------------------------------------------------------------------------------- label map

_TOKEN = re.compile(r"""\s*(?:(\#[^\n]*)|([{}:;,])|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|([^\s{}:;,"'#]+))""")


def load_label_map(path: Path) -> list[str]:
    """Label names of an OD API ``label_map.pbtxt``, ordered by id; ids must be exactly 1..N. Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"label map {path}: cannot be read: {error}") from error
    try:
        fields = _parse_text_proto(text)
    except ValueError as error:
        raise ConfigError(f"label map {path}: {error}") from error
    names: dict[int, str] = {}
    for key, item in fields:
        if key != "item":
            continue
        if not isinstance(item, list):
            raise ConfigError(f"label map {path}: 'item' must be a message {{ ... }}")
        values = dict((k, v) for k, v in item if not isinstance(v, list))
        ident, name = values.get("id"), values.get("name")
        if not isinstance(ident, int):
            raise ConfigError(f"label map {path}: an item has no integer id (name {name!r})")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"label map {path}: item id {ident} has no name")
        if ident in names:
            raise ConfigError(f"label map {path}: id {ident} is used twice ({names[ident]!r}, {name!r})")
        if name in names.values():
            raise ConfigError(f"label map {path}: name {name!r} is used twice")
        names[ident] = name
    if not names:
        raise ConfigError(f"label map {path}: has no items")
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ConfigError(f"label map {path}: ids must be 1..{len(names)} without gaps, found {sorted(names)}")
    return [names[i] for i in range(1, len(names) + 1)]


def _tokens(text: str) -> list[tuple[str, object, int]]:
    """(kind, value, line) tokens: kind is 'punct', 'str' or 'word'; comments dropped."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"line {text.count(chr(10), 0, pos) + 1}: cannot parse {text[pos:pos + 20]!r}")
            break
        line = text.count("\n", 0, match.start(match.lastindex or 0)) + 1
        if match.group(2):
            tokens.append(("punct", match.group(2), line))
        elif match.group(3):
            tokens.append(("str", _unquote(match.group(3)), line))
        elif match.group(4):
            tokens.append(("word", match.group(4), line))
        pos = match.end()
    return tokens


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), quoted[1:-1])


def _parse_text_proto(text: str) -> list:
    """A protobuf text-format document as nested [(key, value)] lists (a message value is itself such a list)."""
    tokens = _tokens(text)
    stack: list[list] = [[]]
    i = 0
    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind == "punct" and value == "}":
            if len(stack) == 1:
                raise ValueError(f"line {line}: unexpected '}}'")
            stack.pop()
            i += 1
            continue
        if kind == "punct" and value in ";,":
            i += 1
            continue
        if kind != "word":
            raise ValueError(f"line {line}: expected a field name, found {value!r}")
        i += 1
        if i < len(tokens) and tokens[i][:2] == ("punct", ":"):
            i += 1
        if i >= len(tokens):
            raise ValueError(f"line {line}: field {value!r} has no value")
        vkind, vvalue, vline = tokens[i]
        i += 1
        if (vkind, vvalue) == ("punct", "{"):
            message: list = []
            stack[-1].append((value, message))
            stack.append(message)
        elif vkind == "str":
            while i < len(tokens) and tokens[i][0] == "str":  # adjacent strings concatenate
                vvalue += tokens[i][1]
                i += 1
            stack[-1].append((value, vvalue))
        elif vkind == "word":
            stack[-1].append((value, _scalar(vvalue)))
        else:
            raise ValueError(f"line {vline}: field {value!r} has no value")
    if len(stack) != 1:
        raise ValueError("a '{' is not closed")
    return stack[0]


def _scalar(word: str) -> object:
    try:
        return int(word, 0)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        return word
