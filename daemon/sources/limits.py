"""Bounds on what odal reads from outside, in one place (a leaf module: imports nothing of odal).

Every resource read from an annotation source has a bound here; what goes past it is set aside with a message
that names the bound, never read whole.
"""

from __future__ import annotations

from dataclasses import dataclass

# One export line, or one example's content in Prodigy's database.  A line past this is set aside without being
# held in memory (it is skipped in chunks).  Inline ``data:`` images make lines big: 16 MiB holds a ~12 MB image.
# Parsed, a hostile line of that size (``[[],[],...]``) can take ~15x as much memory for a moment.
MAX_LINE_BYTES = 16 * 1024 * 1024
# Spans (boxes) in one record; the OD API trains on at most a few hundred per image.
MAX_SPANS = 10_000
# Digits of an ``_input_hash`` / ``_task_hash`` (Prodigy writes 32-bit integers; 64-bit fits in 20 characters).
MAX_HASH_DIGITS = 20
# ``width`` / ``height`` a record may claim, in pixels (the ledger stores them as SQLite integers).
MAX_DIMENSION = 1_000_000
# Characters of a value or of an error shown in a log line or the set-aside list.
MAX_SHOWN_CHARS = 200
MAX_ERROR_CHARS = 2000


# The bounds on image files that the ``[limits]`` section of odal.toml sets: :func:`configure` is called by the
# daemon at start and on reload; :func:`reset` restores the defaults (the tests call it).
@dataclass(frozen=True)
class Limits:
    """``max_image_bytes``: bigger files are refused unread; ``max_image_pixels``: checked in the image header,
    before decoding; ``settle_seconds``: a file unchanged this long is complete (a broken one is not still being
    copied)."""

    max_image_bytes: int = 64 << 20
    max_image_pixels: int = 50_000_000
    settle_seconds: float = 5.0


DEFAULT_LIMITS = Limits()
_limits = DEFAULT_LIMITS


def limits() -> Limits:
    return _limits


def configure(new: Limits) -> None:
    global _limits
    _limits = new


def reset() -> None:
    configure(DEFAULT_LIMITS)
