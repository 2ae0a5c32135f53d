"""Which files are images, and every image below a folder: one rule for the watcher, the active-learning queue
and the recipe.  ``ImageData`` is an image read once: its bytes, size and RGB pixels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def has_image_suffix(name: str) -> bool:
    """The name ends with an image suffix (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def is_image_name(name: str) -> bool:
    """An image file odal reads: an image suffix, not hidden (a dot file is a copy in progress or an editor's)."""
    return not name.startswith(".") and has_image_suffix(name)


def image_files(root: Path) -> Iterator[Path]:
    """Every image name below ``root`` (hidden files and folders skipped), unresolved, folders in sorted order.
    Names only: whether a file may be read is the reader's check (odal.daemon.sources.safe_files)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if is_image_name(name):
                yield Path(dirpath, name)


@dataclass(frozen=True)
class ImageData:
    path: Path
    data: bytes
    width: int
    height: int
    pixels: np.ndarray  # (height, width, 3) uint8
