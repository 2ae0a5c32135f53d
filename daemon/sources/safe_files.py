"""Resource limits, and the one way the daemon opens a file it does not own (the images of the data dir).

Every image read anywhere in the daemon (the ingest's check, the queue's scan and scoring, the round's snapshot)
goes through :func:`open_file`: the path is resolved (symlinks followed, a loop refused) and must end up inside one
of the allowed roots; it is ``stat``-ed before it is opened and must be a regular file no bigger than the byte
limit (a FIFO, a device, a socket or a folder is never opened); it is opened ``O_NONBLOCK | O_NOFOLLOW`` and
checked again with ``fstat`` (a file swapped meanwhile is refused); reads stop at the byte limit.

The limits are :mod:`odal.daemon.sources.limits`'s (every bound on outside input lives there).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from odal.common.errors import OdalError
from odal.daemon.sources.limits import limits


class Refused(OdalError):
    """A file the daemon will not read as it is (outside the roots, not a regular file, too big, a loop)."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def resolve_inside(path: str | os.PathLike, roots: Iterable[Path]) -> Path:
    """``path`` with every symlink followed; raises :class:`FileNotFoundError` when it does not exist and
    :class:`Refused` when it is a symlink loop or ends up outside every root (``roots`` are resolved already)."""
    try:
        resolved = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:  # ELOOP, ENAMETOOLONG, a NUL byte, ...
        raise Refused(f"{path}: cannot be resolved: {error}") from error
    roots = list(roots)
    if not any(resolved.is_relative_to(root) for root in roots):
        raise Refused(f"{path}: resolves to {resolved}, outside {', '.join(map(str, roots))}")
    return resolved


def check_file(path: str | os.PathLike, roots: Iterable[Path], max_bytes: int | None = None
               ) -> tuple[Path, os.stat_result]:
    """The resolved path and ``stat`` of a regular file inside ``roots`` of at most ``max_bytes`` (default: the
    image limit), without opening it; raises :class:`Refused` or :class:`FileNotFoundError`."""
    resolved = resolve_inside(path, roots)
    st = os.stat(resolved, follow_symlinks=False)
    _check_stat(path, st, max_bytes)
    return resolved, st


def _check_stat(path, st: os.stat_result, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{path}: is {kind(st.st_mode)}, not a regular file")
    limit = limits().max_image_bytes if max_bytes is None else max_bytes
    if st.st_size > limit:
        raise Refused(f"{path}: is too large ({st.st_size} bytes > {limit})")


@contextlib.contextmanager
def open_file(path: str | os.PathLike, roots: Iterable[Path], max_bytes: int | None = None
              ) -> Iterator[tuple[Path, os.stat_result, BinaryIO]]:
    """(resolved path, stat, binary file) of a file :func:`check_file` accepts, opened without blocking and
    without following a symlink put in its place; the file is closed on exit."""
    resolved, _ = check_file(path, roots, max_bytes)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(resolved, flags)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise Refused(f"{path}: cannot be opened: {error}") from error
    handle = os.fdopen(fd, "rb")
    with handle:
        st = os.fstat(fd)
        _check_stat(path, st, max_bytes)
        yield resolved, st, handle


def read_file(path: str | os.PathLike, roots: Iterable[Path], max_bytes: int | None = None
              ) -> tuple[Path, os.stat_result, bytes]:
    """(resolved path, stat, bytes) of a file :func:`open_file` accepts; never reads more than the limit."""
    limit = limits().max_image_bytes if max_bytes is None else max_bytes
    with open_file(path, roots, limit) as (resolved, st, handle):
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew after the fstat
        raise Refused(f"{path}: is too large (more than {limit} bytes)")
    return resolved, st, data


def settled(st: os.stat_result, now: float | None = None) -> bool:
    """Whether a file with this ``stat`` has not changed for ``settle_seconds`` (its copy is over).

    ctime as well as mtime: ``cp -p`` and ``rsync -t`` set an old mtime, but any change moves the ctime."""
    now = time.time() if now is None else now
    return now - max(st.st_mtime, st.st_ctime) >= limits().settle_seconds
