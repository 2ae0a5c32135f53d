"""Hostile entries for a data dir, made for real: FIFOs, device links and nodes, symlink loops, links leading out,
decompression bombs, truncated and random files with image names, folders named like images, empty and sparse
files.  Used by the data-dir tests, their fuzzing and the real-daemon test."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path

from PIL import Image

# Every kind, and whether a good image of that name must come out of it (only "good").
KINDS = ("good", "fifo", "dev_zero_link", "dev_node", "loop", "self_loop", "escaping_link", "dangling_link",
         "bomb", "big_png", "truncated_jpeg", "random_bytes", "folder", "empty", "sparse_huge", "inside_link")


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, a few hundred KB at most however large it is:
    the IDAT is deflate of zero rows, streamed so that making it costs no memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row * min(height, 64))]
    for _ in range((height - min(height, 64)) // 64):
        parts.append(packer.compress(row * 64))
    parts.append(packer.compress(row * ((height - min(height, 64)) % 64)))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


_PNG_CACHE: dict[tuple[int, int], bytes] = {}


def cached_png(width: int, height: int) -> bytes:
    if (width, height) not in _PNG_CACHE:
        _PNG_CACHE[width, height] = png_declaring(width, height)
    return _PNG_CACHE[width, height]


def jpeg(size: tuple[int, int] = (64, 48), grey: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (grey, grey // 2, 255 - grey)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def make(data_dir: Path, name: str, kind: str, seed: int = 0, outside: Path | None = None) -> Path:
    """Create entry ``name`` of ``kind`` in ``data_dir``; returns its path.  ``outside`` is a folder beside the
    data dir for the links that lead out."""
    path = data_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "good":
        path.write_bytes(jpeg((40 + seed % 50, 30 + seed % 40), seed % 256))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero_link":
        os.symlink("/dev/zero", path)
    elif kind == "dev_node":  # /dev/zero's own numbers, as a node inside the data dir (needs root)
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
        except PermissionError:
            os.symlink("/dev/urandom", path)
    elif kind == "loop":
        os.symlink(path.with_name(path.name + ".other.png"), path)
        os.symlink(path, path.with_name(path.name + ".other.png"))
    elif kind == "self_loop":
        os.symlink(path, path)
    elif kind == "escaping_link":
        target = (outside or data_dir.parent) / f"outside-{seed}.jpg"
        target.write_bytes(jpeg())
        os.symlink(target, path)
    elif kind == "dangling_link":
        os.symlink(data_dir / f"nothing-{seed}.jpg", path)
    elif kind == "bomb":  # 30000 x 30000: Pillow's own DecompressionBombError
        path.write_bytes(cached_png(30000, 30000))
    elif kind == "big_png":  # 10000 x 9000 = 90 MP: under Pillow's error, over odal's default limit
        path.write_bytes(cached_png(10000, 9000))
    elif kind == "truncated_jpeg":
        data = jpeg((96, 80), seed % 256)
        path.write_bytes(data[: max(200, len(data) * (1 + seed % 7) // 9)])
    elif kind == "random_bytes":
        path.write_bytes(os.urandom(1 + seed % 3000))
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "sparse_huge":  # 3 GiB that take no disk: read whole, it would take 3 GiB of memory
        with open(path, "wb") as handle:
            handle.truncate(3 << 30)
    elif kind == "inside_link":  # a symlink to a good image inside the data dir: fine, it is that image
        target = data_dir / f"target-{seed}.jpg"
        target.write_bytes(jpeg((50, 40), 7))
        os.symlink(target, path)
    else:
        raise ValueError(kind)
    return path
