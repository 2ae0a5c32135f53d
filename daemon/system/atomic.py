"""The one way odal writes files and publishes folders: aside, fsync, rename, fsync the parent.

A reader (TF Serving polling a base path, a restarted daemon, a user's ``cat``) sees either the old content or the
new, never a partial one.  Temporary names start with ``.`` and are not numbers, so TF Serving ignores them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back; there is no other way to read it)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file name beside ``path`` for a writer that wants a name; then fsync and rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would create (mkstemp's 0600 hid files from TF Serving's group)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``; on error remove it."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder below ``root`` (deepest first), so a later rename publishes durable content."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the complete folder ``staging`` appear as ``target`` in one rename (same filesystem; no overwrite)."""
    staging, target = Path(staging), Path(target)
    fsync_tree(staging)
    if target.exists():
        raise FileExistsError(f"refusing to publish over existing {target}")
    os.rename(staging, target)
    fsync_dir(target.parent)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder so that it never looks half-present: rename it aside first, then delete."""
    path = Path(path)
    if not path.exists():
        return
    doomed = path.parent / f".deleting-{path.name}-{os.getpid()}"
    os.rename(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
