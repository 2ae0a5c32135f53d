"""Event values the watchers put on the daemon's queue: small, immutable and hashable (so repeats coalesce)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportChanged:
    """A ``db-out`` JSONL file in the export folder was created, appended to, rewritten or removed."""

    path: str


@dataclass(frozen=True)
class ProdigyDbChanged:
    """Prodigy's SQLite database (or its WAL/journal) changed."""

    path: str


@dataclass(frozen=True)
class ImageChanged:
    """An image in the data folder was created, changed or deleted."""

    path: str
    deleted: bool = False
