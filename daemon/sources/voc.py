"""PASCAL VOC folders as people have them: ``Annotations/`` + ``JPEGImages/`` (the VOC devkit), ``annotations/`` +
``images/`` (raccoon), ``annots/`` + ``imgs/``, any of them a symlink.

:func:`read` finds the annotation folder and the image folder by these common names, reads each XML file (at most
:data:`MAX_XML_BYTES`), and checks that each image is a regular file inside the image folder that decodes
(through :mod:`~odal.daemon.sources.safe_files` and :func:`~odal.daemon.sources.images.check_decodes`, within the
``[limits]``).  What cannot be used is skipped with one message naming the file; the rest is returned.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from odal.common.errors import OdalError

ANNOTATION_DIRS = ("Annotations", "annotations", "annots", "Annots", "xml")
IMAGE_DIRS = ("JPEGImages", "images", "Images", "imgs", "img", "jpegs")
MAX_XML_BYTES = 1 << 20  # a VOC file of a few hundred boxes is a few tens of kB


class VocError(OdalError):
    """The folder has no VOC annotations in any of the known layouts."""

    exit_code = 2


@dataclass
class VocFolder:
    items: list = field(default_factory=list)  # datasets.GroundTruth, images under data_dir
    data_dir: Path | None = None  # the image folder, resolved (symlinks followed)
    annotations: Path | None = None
    skipped: list[str] = field(default_factory=list)  # one message per file left out


def _first_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_dir()), None)


def read(folder: Path, check_images: bool = True) -> VocFolder:
    """The usable items of a VOC folder; raises :class:`VocError` when no annotation folder holds ``*.xml``."""
    from odal.daemon.sources.datasets import GroundTruth

    folder = Path(folder)
    annotations = _first_dir(folder, ANNOTATION_DIRS)
    if annotations is None or not any(annotations.glob("*.xml")):
        raise VocError(f"{folder}: no PASCAL VOC annotations found: expected *.xml files in one of "
                       f"{', '.join(name + '/' for name in ANNOTATION_DIRS)} beside the images "
                       f"({', '.join(name + '/' for name in IMAGE_DIRS)})")
    image_dir = Path(os.path.realpath(_first_dir(folder, IMAGE_DIRS) or annotations))
    out = VocFolder(data_dir=image_dir, annotations=annotations)
    for xml_path in sorted(annotations.glob("*.xml")):
        try:
            item = _item(xml_path, image_dir, check_images, GroundTruth)
        except (OSError, ValueError, TypeError, ET.ParseError, OdalError) as error:
            out.skipped.append(f"{xml_path.name}: skipped: {error}")
            continue
        out.items.append(item)
    return out


def _item(xml_path: Path, image_dir: Path, check_images: bool, ground_truth):
    from odal.daemon.sources import images, safe_files

    if xml_path.stat().st_size > MAX_XML_BYTES:
        raise ValueError(f"larger than {MAX_XML_BYTES} bytes")
    root = ET.fromstring(xml_path.read_bytes())
    name = (root.findtext("filename") or "").strip()
    if not name:
        raise ValueError("no <filename>")
    image = image_dir / name
    if not image.exists() and not Path(name).suffix:  # some sets leave out the extension
        image = next(iter(sorted(image_dir.glob(f"{name}.*"))), image)
    if not image.exists():
        raise ValueError(f"its image {image} is not there")
    width, height = int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0)
    if check_images:
        _, _, data = safe_files.read_file(image, [image_dir])
        try:
            width, height = images.check_decodes(data)
        except images.Undecodable as error:
            raise ValueError(f"its image {image.name} cannot be decoded ({error})") from None
    if width <= 0 or height <= 0:
        raise ValueError("no image size")
    boxes = []
    for number, obj in enumerate(root.iter("object"), 1):
        x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)  # VOC's 1-based edges
        name = (obj.findtext("name") or "").strip()
        if not name or not (x0 < x1 and y0 < y1):  # also false for NaN
            raise ValueError(f"object {number}: no name or an empty box ({x0}, {y0}, {x1}, {y1})")
        boxes.append((name, x0, y0, x1, y1))
    return ground_truth(image, width, height, tuple(boxes))
