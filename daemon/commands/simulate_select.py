"""The selection strategies ``odal simulate`` compares: :mod:`odal.common.selection`, the daemon's own.

``random`` asks nothing of the model, so its runs neither wait for a version to load nor score the pool.
"""

from __future__ import annotations

from collections import Counter

from odal.common import selection
from odal.common.selection import Candidate  # noqa: F401 - the type the runs build

STRATEGIES = selection.STRATEGIES


def needs_model(name: str) -> bool:
    """Whether the strategy looks at the served model's detections."""
    return name != "random"


def needs_embeddings(name: str) -> bool:
    """Whether the strategy also compares images with the labelled ones (k-center on the served embeddings)."""
    return name == "diverse"


def class_counts(data, keys: list[str]) -> dict[int, int]:
    """Boxes of each class (label-map id) among the labelled images ``keys``: the class quota's counts."""
    counts = Counter(data.labels.index(box[0]) + 1 for key in keys for box in data.items[key].boxes)
    return {number: counts.get(number, 0) for number in range(1, len(data.labels) + 1)}


def select(name: str, candidates: list, k: int, *, data, labelled: list[str], seed: int,
           labelled_embeddings=None) -> list[str]:
    """The keys of the ``k`` candidates strategy ``name`` asks to label next (deterministic for ``seed``);
    ``labelled_embeddings``: the labelled images' embeddings by the same model (k-center keeps away from them)."""
    return list(selection.select(name, candidates, k, labeled_embeddings=labelled_embeddings,
                                 class_counts=class_counts(data, labelled), seed=seed))
