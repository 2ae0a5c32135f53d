"""The selection strategies ``odal simulate`` compares, behind one call.

The strategies live in ``odal.common.selection`` (``select(name, candidates, k, *, labeled_embeddings, seed)``);
until that module exists this file provides the two the daemon has always had: ``random`` and ``uncertainty`` (the
queue's order, :func:`odal.common.uncertainty.uncertainty`, most uncertain first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from odal.common.uncertainty import uncertainty

try:  # the shared strategies, once merged
    from odal.common import selection as _shared
except ImportError:  # pragma: no cover - depends on the merge
    _shared = None


@dataclass(frozen=True)
class Candidate:
    """An unlabelled image as the served model saw it: every detection it returned (before any display threshold)."""

    key: str
    scores: np.ndarray
    classes: np.ndarray
    embedding: np.ndarray | None = field(default=None)


LOCAL = ("random", "uncertainty")


def names() -> tuple[str, ...]:
    if _shared is not None and hasattr(_shared, "STRATEGIES"):
        return tuple(_shared.STRATEGIES)
    return LOCAL


def needs_model(name: str) -> bool:
    """Whether the strategy looks at the model's detections (random does not: no scoring needed)."""
    return name != "random"


def select(name: str, candidates: list[Candidate], k: int, *, labeled_embeddings=None, seed: int = 0) -> list[str]:
    """The keys of the ``k`` candidates the strategy ``name`` asks to label next (deterministic for ``seed``)."""
    if _shared is not None:
        return list(_shared.select(name, candidates, k, labeled_embeddings=labeled_embeddings, seed=seed))
    if name == "random":
        keys = sorted(c.key for c in candidates)
        return random.Random(seed).sample(keys, min(k, len(keys)))
    if name == "uncertainty":
        ranked = sorted(candidates, key=lambda c: (-uncertainty(c.scores), c.key))
        return [c.key for c in ranked[:k]]
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(LOCAL)}")
