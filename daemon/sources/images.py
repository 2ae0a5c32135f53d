"""Decoding images the daemon did not make, within the limits of :mod:`odal.daemon.sources.limits`.

* :func:`header_size` reads only the header (Pillow opens lazily) and refuses an image over the pixel limit, a
  decompression bomb included, before a single pixel is decoded.
* :func:`check_decodes` verifies and decodes the bytes once (a JPEG cut short passes ``verify()`` but not ``load()``).
* :func:`pixels_for_scoring` decodes an RGB array no larger than ``max_side``, or than the served model's input size
  when it is known (JPEGs are decoded at reduced scale, others shrunk right after decoding): what the
  active-learning queue sends to the server.
* :func:`locate` finds a record's image (a path inside ``data_dir``, a ``data:`` URI stored once as a blob) and
  checks it; every problem is an :class:`~odal.common.errors.InvalidRecord` whose ``image`` is set when the file
  may still change (missing, or broken while it is still being written).  A broken file unchanged for
  ``settle_seconds`` is complete: it is set aside with a message starting with :data:`COMPLETE_BUT`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from odal.daemon.sources import safe_files
from odal.daemon.sources.limits import limits
from odal.daemon.system.atomic import atomic_write_bytes
from odal.common.errors import InvalidRecord, OdalError

COMPLETE_BUT = "image is complete but"  # a set-aside image that is not waiting for a copy to finish
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_DATA_URI = re.compile(r"^data:image/([a-zA-Z0-9.+-]+)((?:;[^,;]*)*?);base64,", re.IGNORECASE)
_EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "pjpeg": "jpg", "png": "png", "gif": "gif", "bmp": "bmp",
               "webp": "webp", "tiff": "tif", "x-ms-bmp": "bmp"}


class Undecodable(OdalError):
    """The bytes are not an image Pillow can decode (or it has zero size)."""


class TooLarge(OdalError):
    """The image header declares more pixels than ``max_image_pixels`` (a decompression bomb, or just huge)."""


@dataclass(frozen=True)
class ImageFile:
    """A located, decodable image and its real size in pixels."""

    path: Path
    width: int
    height: int


def _open(source):
    """Pillow's lazy open (header only); a bomb or an over-limit header raises :class:`TooLarge`."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except Image.DecompressionBombError as error:
            raise TooLarge(f"image is too large (a decompression bomb: {error})") from error
        except UnidentifiedImageError:
            raise Undecodable("not an image format Pillow can identify") from None
        except Exception as error:  # Pillow raises many types (SyntaxError, struct.error, ValueError, ...)
            raise Undecodable(f"{type(error).__name__}: {error}") from error
    width, height = image.size
    limit = limits().max_image_pixels
    if width * height > limit:
        image.close()
        raise TooLarge(f"image is too large ({width}x{height} > {limit} pixels)")
    if width <= 0 or height <= 0:
        image.close()
        raise Undecodable("image has zero size")
    return image


def header_size(source) -> tuple[int, int]:
    """(width, height) from the header of ``source`` (bytes or a binary file); decodes nothing."""
    with _open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.size


def check_decodes(data: bytes) -> tuple[int, int]:
    """(width, height) of ``data`` after checking its header, ``verify()`` and a full decode."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(io.BytesIO(data)) as image:
            size = image.size
            try:
                image.verify()
            except Exception as error:  # noqa: BLE001 - any Pillow failure means: not decodable
                raise Undecodable(f"{type(error).__name__}: {error}") from error
        with _open(io.BytesIO(data)) as image:
            try:
                image.load()
            except Exception as error:  # noqa: BLE001
                raise Undecodable(f"{type(error).__name__}: {error}") from error
    return size


def pixels_for_scoring(data: bytes, max_side: int = 1024, model_side: int | None = None):
    """The RGB ``uint8`` array (height, width, 3) of ``data``, shrunk to at most ``max_side`` pixels a side.

    With ``model_side`` (the served model's input side, e.g. 300 for an SSD of ``fixed_shape_resizer`` 300x300):
    shrunk only by cheap steps that keep the shorter side at least ``model_side`` and the aspect (the model
    resizes what it is sent itself, as it would the full image): a JPEG decoded at 1/2, 1/4 or 1/8 scale, then an
    integer box reduction; an exact resize costs more on 2 cores than it saves the server.  Never enlarged."""
    import numpy as np
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(io.BytesIO(data)) as image:
            try:
                box = scoring_size(image.size, max_side, model_side)
                image.draft("RGB", box)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, never below ``box``
                if model_side:
                    factor = min(image.size[0] // box[0], image.size[1] // box[1])
                    if factor >= 2 and image.mode in ("RGB", "L", "RGBA"):
                        image = image.reduce(factor)  # still at least ``box``: below twice it
                if max(image.size) > max_side:
                    try:
                        image.thumbnail(box)  # shrink before converting: one full-size copy at most
                    except (ValueError, OSError):  # a mode resize does not take (e.g. "I;16"): convert first
                        image = image.convert("RGB")
                        image.thumbnail(box)
                return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
            except Exception as error:  # noqa: BLE001
                raise Undecodable(f"{type(error).__name__}: {error}") from error


def scoring_size(size: tuple[int, int], max_side: int = 1024, model_side: int | None = None) -> tuple[int, int]:
    """The (width, height) :func:`pixels_for_scoring` shrinks an image of ``size`` towards: within ``max_side``,
    the shorter side ``model_side`` (when given and smaller), the aspect kept, never enlarged."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    if model_side:
        scale = min(scale, max(model_side / min(width, height), 0.0))
    return max(1, round(width * scale)), max(1, round(height * scale))


# ------------------------------------------------------------------------------------------- a record's image


def locate(ref: str, meta_file: str | None, data_dir: Path, blob_dir: Path) -> ImageFile:
    """Locate a record's image and check it decodes; raises :class:`InvalidRecord`.

    ``ref`` may be a path relative to ``data_dir``, an absolute path inside it, or a ``data:image/...;base64,``
    URI (stored once as ``blob_dir/<sha256>.<ext>``).  When the path does not exist, ``meta_file`` relative to
    ``data_dir`` is tried.  Paths that leave ``data_dir`` (``..``, symlinks) and URLs are refused.
    """
    scheme = _SCHEME.match(ref)
    if ref[:5].lower() == "data:":
        return _store_data_uri(ref, Path(blob_dir))
    if scheme:
        if scheme.group(1).lower() in ("http", "https"):
            raise InvalidRecord(f"URL images cannot be fetched: {ref[:200]}")
        raise InvalidRecord(f"unsupported image reference: {ref[:200]}")
    root = _resolved_root(Path(data_dir))
    path = _candidate(root, ref)
    if not _exists(path) and meta_file and meta_file != ref:
        fallback = _candidate(root, meta_file)
        if _exists(fallback):
            path = fallback
    try:
        resolved, st, data = safe_files.read_file(path, [root])
    except FileNotFoundError:
        raise InvalidRecord(f"image file not found: {ref} (looked in {root})", image=str(_resolved(path))) from None
    except safe_files.Refused as error:
        message = str(error)
        if "outside" in message:
            raise InvalidRecord(f"image path {ref} is outside data_dir {root}; refused ({message})") from None
        if "not a regular file" in message:
            raise InvalidRecord(f"image is not a file: {message}") from None
        raise InvalidRecord(f"image refused: {message}") from None
    except OSError as error:
        raise InvalidRecord(f"image cannot be read: {path}: {error}", image=str(path)) from error
    complete = safe_files.settled(st)
    if not data:
        if complete:
            raise InvalidRecord(f"{COMPLETE_BUT} empty (0 bytes, unchanged for "
                                f"{limits().settle_seconds:g} s): {resolved}", image=str(resolved))
        raise InvalidRecord(f"image is empty (0 bytes): {resolved}", image=str(resolved))
    try:
        width, height = check_decodes(data)
    except TooLarge as error:
        raise InvalidRecord(f"{error}: {resolved}") from None
    except Undecodable as error:
        if complete:
            raise InvalidRecord(f"{COMPLETE_BUT} cannot be decoded (unchanged for "
                                f"{limits().settle_seconds:g} s): {resolved}: {error}",
                                image=str(resolved)) from None
        raise InvalidRecord(f"image cannot be decoded (yet: still being written?): {resolved}: {error}",
                            image=str(resolved)) from None
    return ImageFile(resolved, width, height)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _exists(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _resolved_root(data_dir: Path) -> Path:
    try:
        return data_dir.resolve(strict=True)
    except (OSError, RuntimeError) as error:
        raise InvalidRecord(f"data_dir {data_dir} is not usable: {error}") from error


def _candidate(root: Path, ref: str) -> Path:
    """``ref`` against ``root``, refused early when it names a place outside ``root`` (``..``, absolute)."""
    if "\x00" in ref:
        raise InvalidRecord(f"image path {ref!r} cannot be resolved: it holds a NUL byte")
    candidate = Path(ref)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop: read_file refuses it with its reason
        return candidate
    if not resolved.is_relative_to(root):
        raise InvalidRecord(f"image path {ref} is outside data_dir {root}; refused")
    return candidate


def _store_data_uri(uri: str, blob_dir: Path) -> ImageFile:
    match = _DATA_URI.match(uri)
    if not match:
        raise InvalidRecord(f"unsupported data URI (need data:image/...;base64,): {uri[:60]}")
    ext = _EXTENSIONS.get(match.group(1).lower())
    if ext is None:
        raise InvalidRecord(f"unsupported data URI image type image/{match.group(1)}")
    limit = limits().max_image_bytes
    if (len(uri) - match.end()) * 3 // 4 > limit + 3:
        raise InvalidRecord(f"data URI image is too large (more than {limit} bytes)")
    try:
        data = base64.b64decode(uri[match.end():].strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRecord(f"data URI is not valid base64: {error}") from error
    if not data:
        raise InvalidRecord("image is empty (0 bytes): <data URI>")
    try:
        width, height = check_decodes(data)
    except (TooLarge, Undecodable) as error:
        reason = "" if isinstance(error, TooLarge) else "image cannot be decoded: "
        raise InvalidRecord(f"{reason}{error}: <data URI>") from None
    path = blob_dir / f"{hashlib.sha256(data).hexdigest()}.{ext}"
    if not (path.is_file() and path.stat().st_size == len(data)):
        atomic_write_bytes(path, data)
    return ImageFile(path, width, height)
