"""Ground-truth data sets for the demo, the tests and the benchmarks (no TensorFlow).

* :func:`generate_shapes` makes a small detection data set on any machine: coloured squares and discs on noisy
  backgrounds, JPEG files and their boxes.
* :func:`read_voc` reads a folder of PASCAL VOC annotated images (``images/`` + ``annotations/*.xml``, or another
  common layout), such as the raccoon data set.

Both give :class:`GroundTruth` items, which :func:`prodigy_record` turns into the record ``prodigy db-out`` writes
after an annotator drew those boxes in ``image.manual`` (the simulated annotator of the demo and the tests).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from odal.common.hashing import content_hash
from odal.common.spans import rect_span
from odal.daemon.system.atomic import atomic_write, atomic_write_text

SHAPE_LABELS = ("square", "disc")


@dataclass(frozen=True)
class GroundTruth:
    image: Path
    width: int
    height: int
    boxes: tuple[tuple[str, float, float, float, float], ...]  # (label, x0, y0, x1, y1) in pixels


def generate_shapes(out_dir: Path, count: int, seed: int = 0, size: tuple[int, int] = (192, 160)) -> list[GroundTruth]:
    """``count`` JPEGs with 1-2 large shapes each, written atomically into ``out_dir``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    width, height = size
    for index in range(count):
        background = tuple(rng.randint(0, 90) for _ in range(3))
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        for _ in range(40):  # clutter, so that the model must learn shape, not just "anything bright"
            x, y = rng.randint(0, width), rng.randint(0, height)
            draw.line((x, y, x + rng.randint(-30, 30), y + rng.randint(-30, 30)),
                      fill=tuple(rng.randint(0, 120) for _ in range(3)), width=2)
        boxes = []
        for _ in range(rng.randint(1, 2)):
            label = rng.choice(SHAPE_LABELS)
            side = rng.randint(min(size) // 3, min(size) // 2)
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            colour = tuple(rng.randint(150, 255) for _ in range(3))
            if label == "square":
                draw.rectangle((x0, y0, x0 + side, y0 + side), fill=colour)
            else:
                draw.ellipse((x0, y0, x0 + side, y0 + side), fill=colour)
            boxes.append((label, float(x0), float(y0), float(x0 + side), float(y0 + side)))
        path = out_dir / f"shapes-{seed}-{index:04d}.jpg"
        with atomic_write(path) as handle:
            image.save(handle, format="JPEG", quality=90)
        items.append(GroundTruth(path, width, height, tuple(boxes)))
    return items


def read_voc(folder: Path) -> list[GroundTruth]:
    """Items of a PASCAL VOC folder in any common layout (see :mod:`odal.daemon.sources.voc`; what cannot be used
    is left out; ``voc.read`` says why)."""
    from odal.daemon.sources import voc

    return voc.read(folder).items


def labels_of(items: list[GroundTruth]) -> list[str]:
    return sorted({box[0] for item in items for box in item.boxes})


def write_label_map(path: Path, labels: list[str]) -> None:
    atomic_write_text(path, "".join(f"item {{\n  id: {i}\n  name: '{name}'\n}}\n" for i, name in enumerate(labels, 1)))


def input_hash(image: Path) -> int:
    """A stand-in for Prodigy's input hash: stable for the same image bytes (Prodigy uses a 32-bit murmurhash)."""
    return content_hash(image.read_bytes())


def prodigy_record(item: GroundTruth, image_field: str, answer: str = "accept",
                   timestamp: int | None = None) -> dict:
    """The record ``prodigy db-out`` prints for this item answered in ``image.manual`` (``--remove-base64``)."""
    spans = []
    for label, x0, y0, x1, y1 in item.boxes:
        spans.append({"id": str(uuid.uuid4()), **rect_span(label, x0, y0, x1, y1), "color": "yellow"})
    hashed = input_hash(item.image)
    return {
        "image": image_field, "text": item.image.stem, "meta": {"file": item.image.name}, "path": image_field,
        "_is_binary": False, "_input_hash": hashed, "_task_hash": hashed ^ 0x5A5A5A5A, "_view_id": "image_manual",
        "width": item.width, "height": item.height, "spans": spans if answer == "accept" else [],
        "answer": answer, "_timestamp": int(time.time()) if timestamp is None else timestamp,
    }
