"""``odal simulate``'s data: a fully labelled set read once, and each repeat's held-out test set and seed set.

Two sources: a PASCAL VOC folder (``images/`` + ``annotations/`` as in ``../shared/datasets/raccoon``, or the
standard ``JPEGImages/`` + ``Annotations/``), or a ``prodigy db-out`` file whose accepted answers are the ground
truth (images relative to ``--data-dir``, by default the file's folder).  An item's key is its image path relative
to the data dir: stable across runs, so a rerun with the same ``--out`` finds the same sets.

The splits of a repeat depend only on ``(seed, repeat)`` and the keys, never on the strategy: every strategy of a
repeat sees the same test set (never selected, never trained on) and starts from the same seed set.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from odal.common.errors import ConfigError
from odal.daemon.sources import datasets
from odal.daemon.sources.datasets import GroundTruth

MAX_EXPORT_BYTES = 256 << 20  # a db-out file larger than this is refused unread
MAX_ITEMS = 100_000


@dataclass(frozen=True)
class LabelledSet:
    data_dir: Path  # the images' root: the workspaces' data_dir
    items: dict[str, GroundTruth]  # key (path relative to data_dir) -> ground truth
    labels: list[str]

    def record(self, key: str) -> dict:
        """The Prodigy record an annotator would have saved for this image (``image.manual``, accepted)."""
        return datasets.prodigy_record(self.items[key], key, timestamp=1)


def load(images: Path | None = None, export: Path | None = None, data_dir: Path | None = None) -> LabelledSet:
    if (images is None) == (export is None):
        raise ConfigError("give one of --images VOC_DIR or --export DB_OUT.jsonl")
    if images is not None:
        root, items = _read_voc(Path(images).resolve())
    else:
        root, items = _read_export(Path(export).resolve(), Path(data_dir).resolve() if data_dir else None)
    items = {key: item for key, item in items.items() if item.boxes}
    if len(items) < 4:
        raise ConfigError(f"{images or export}: {len(items)} labelled images with boxes; odal simulate needs more")
    return LabelledSet(root, dict(sorted(items.items())), datasets.labels_of(list(items.values())))


def _read_voc(folder: Path) -> tuple[Path, dict[str, GroundTruth]]:
    for image_dir, xml_dir in (("images", "annotations"), ("JPEGImages", "Annotations")):
        if (folder / xml_dir).is_dir() and (folder / image_dir).is_dir():
            break
    else:
        raise ConfigError(f"--images {folder}: not a VOC folder (images/ + annotations/, or JPEGImages/ + "
                          f"Annotations/)")
    root = folder / image_dir
    items = {}
    for xml_path in sorted((folder / xml_dir).glob("*.xml"))[:MAX_ITEMS]:
        node = ET.parse(xml_path).getroot()
        name = Path(node.findtext("filename") or f"{xml_path.stem}.jpg").name
        image = root / name
        if not image.is_file() and (root / f"{xml_path.stem}.jpg").is_file():
            image = root / f"{xml_path.stem}.jpg"  # some VOC sets name the file differently in the XML
        if not image.is_file():
            continue
        width, height = int(float(node.findtext("size/width"))), int(float(node.findtext("size/height")))
        boxes = []
        for obj in node.iter("object"):
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
            if x1 > x0 and y1 > y0:
                boxes.append((obj.findtext("name").strip(), x0, y0, x1, y1))
        items[image.name] = GroundTruth(image, width, height, tuple(boxes))
    return root, items


def _read_export(path: Path, data_dir: Path | None) -> tuple[Path, dict[str, GroundTruth]]:
    if path.stat().st_size > MAX_EXPORT_BYTES:
        raise ConfigError(f"--export {path}: larger than {MAX_EXPORT_BYTES >> 20} MiB")
    root = data_dir or path.parent
    items = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if record.get("answer") != "accept":
                    continue
                image = Path(record.get("path") or record["image"])
                image = image if image.is_absolute() else root / image
                boxes = tuple((span["label"], float(span["x"]), float(span["y"]),
                               float(span["x"]) + float(span["width"]), float(span["y"]) + float(span["height"]))
                              for span in record.get("spans", ()))
                item = GroundTruth(image.resolve(), int(record["width"]), int(record["height"]), boxes)
                key = str(item.image.relative_to(root))
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigError(f"--export {path}, line {number}: not a usable accepted record "
                                  f"({type(error).__name__}: {error})") from None
            if item.image.is_file():
                items[key] = item
            if len(items) >= MAX_ITEMS:
                break
    return root, items


@dataclass(frozen=True)
class Split:
    test: list[str]  # held out: only ever evaluated
    seed: list[str]  # labelled before the first round
    pool: list[str]  # everything else: what the strategies choose from (the seed set is taken from it)


def split(keys: list[str], *, seed: int, repeat: int, test_size: int, seed_labels: int) -> Split:
    """The sets of one repeat (the same for every strategy)."""
    if test_size + seed_labels >= len(keys):
        raise ConfigError(f"{len(keys)} images: too few for a test set of {test_size} and {seed_labels} seed labels")
    order = sorted(keys)
    random.Random(f"odal-simulate:{seed}:{repeat}:test").shuffle(order)
    test, pool = sorted(order[:test_size]), order[test_size:]
    chosen = random.Random(f"odal-simulate:{seed}:{repeat}:seed").sample(sorted(pool), seed_labels)
    return Split(test, chosen, sorted(pool))
