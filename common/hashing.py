"""odal's content hash: the stand-in for Prodigy's ``_input_hash`` when a task has none (the recipe's own tasks,
the generated data sets), and the hash the active-learning queue records for what it scored."""

from __future__ import annotations

import hashlib


def content_hash(data: bytes) -> int:
    """Stable for the same bytes: the first 4 bytes of SHA-1 as a signed int (Prodigy's hashes are 32-bit too)."""
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "big", signed=True)
