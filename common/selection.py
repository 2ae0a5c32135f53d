"""Which unlabelled images to annotate next: selection strategies (numpy only: no TensorFlow, no I/O).

:func:`select` picks ``k`` keys among :class:`Candidate` images, each described by what the served model said about
it: the scores and classes of all its detections (before any display threshold) and, when the model gives one, an
image embedding.  Strategies (:data:`STRATEGIES`):

* ``random``: a seeded shuffle.
* ``uncertainty``: the least confident detection first (:func:`odal.common.uncertainty.uncertainty`), odal's order
  before the ``diverse`` strategy.
* ``diverse``: uncertainty, diversity and class balance together, as in the literature on active learning for
  detection (per-box least confidence, max aggregation per image; core-set / k-center greedy on image features;
  class-balanced quotas):

  1. image score = the highest per-box uncertainty ``1 - |2s - 1|`` (boxes at or above
     :data:`~odal.common.uncertainty.SCORE_FLOOR`), the mean of the three highest breaking ties; an image with no
     such box scores :data:`NO_DETECTION_SCORE` (the model missed everything, or there is nothing: worth a look);
  2. a pool of the ``pool_factor * k`` best-scored images;
  3. ``quota_fraction`` of the batch goes to rare predicted classes: a class whose labelled count
     (``class_counts``; without it, its predicted count over all candidates) is below the mean count gets slots
     in proportion to ``1 / (count + 1)``, filled with the pool images predicting it (any candidate predicting it
     when the pool has too few);
  4. most of the batch: k-center greedy over the pool's embeddings (L2-normalised) -- each pick is the image
     farthest from every labelled image (``labeled_embeddings``) and every image already picked, so near
     duplicates are not all picked; images without a usable embedding come after, by score;
  5. ``random_fraction`` of the batch (rounded, at least one when that is >= 0.5) drawn at random from all the
     remaining candidates, so the sample keeps covering what the model is wrongly sure about.

Deterministic: the same candidates (in the same order), ``k`` and ``seed`` give the same keys.  Hostile values are
tolerated: NaN or infinite scores count as no detection, scores are clipped to [0, 1], an embedding with NaN, the
wrong size or no length is ignored, repeated keys count once.  The result is ``min(k, distinct keys)`` distinct keys
in the order they were picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np

from odal.common.uncertainty import SCORE_FLOOR, uncertainty

STRATEGIES = ("random", "uncertainty", "diverse")
NO_DETECTION_SCORE = 1.0  # as uncertain as a coin toss: a missed object is what teaches most
CLASS_THRESHOLD = 0.2  # a box at or above this score "predicts" its class (for the class quota)


@dataclass(frozen=True)
class Candidate:
    """One unlabelled image: its ``key`` (any hashable: a path, an input hash), the model's detections for it (all
    of them: ``scores[i]`` and ``classes[i]`` are box i's score and class id) and an optional embedding vector."""

    key: Hashable
    scores: tuple[float, ...] = ()
    classes: tuple[int, ...] = ()
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DiverseOptions:
    pool_factor: float = 4.0
    quota_fraction: float = 0.2
    random_fraction: float = 0.15
    class_threshold: float = CLASS_THRESHOLD

    def __post_init__(self) -> None:
        if not self.pool_factor >= 1.0:
            raise ValueError(f"pool_factor must be >= 1, not {self.pool_factor}")
        for name in ("quota_fraction", "random_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")


def select(name: str, candidates: Sequence[Candidate], k: int, *, labeled_embeddings=None,
           class_counts: Mapping[int, int] | None = None, seed: int, options: DiverseOptions | None = None) -> list:
    """The keys of the ``k`` candidates strategy ``name`` would have annotated next (see the module docstring)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    pool = _distinct(candidates)
    k = max(0, min(int(k), len(pool)))
    if k == 0:
        return []
    rng = np.random.default_rng(seed)
    if name == "random":
        return [pool[i].key for i in rng.permutation(len(pool))[:k]]
    if name == "uncertainty":
        values = np.array([uncertainty(_clean_scores(c.scores)) for c in pool])
        return [pool[i].key for i in np.argsort(-values, kind="stable")[:k]]
    return [pool[i].key for i in _diverse(pool, k, labeled_embeddings, class_counts, rng,
                                          options or DiverseOptions())]


def image_score(scores: Sequence[float]) -> tuple[float, float]:
    """(highest per-box uncertainty, mean of the three highest): the ``diverse`` strategy's rank of an image."""
    values = _clean_scores(scores)
    values = values[values >= SCORE_FLOOR]
    if values.size == 0:
        return NO_DETECTION_SCORE, NO_DETECTION_SCORE
    per_box = np.sort(1.0 - np.abs(2.0 * values - 1.0))[::-1]
    return float(per_box[0]), float(per_box[:3].mean())


# ------------------------------------------------------------------------------------------------- machinery

def _distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    seen: set = set()
    out = []
    for candidate in candidates:
        if candidate.key not in seen:
            seen.add(candidate.key)
            out.append(candidate)
    return out


def _clean_scores(scores) -> np.ndarray:
    try:
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.zeros(0)
    return np.clip(values[np.isfinite(values)], 0.0, 1.0)


def _predicted_classes(candidate: Candidate, threshold: float) -> set[int]:
    try:
        scores = np.asarray(candidate.scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return set()
    out = set()
    for score, cls in zip(scores, candidate.classes):
        if np.isfinite(score) and score >= threshold:
            try:
                out.add(int(cls))
            except (TypeError, ValueError, OverflowError):
                continue
    return out


def _embeddings(pool: Sequence[Candidate], labelled) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool matrix [n, D] L2-normalised, which rows are usable, labelled matrix [m, D]); D is the most common
    length among the pool's finite embeddings."""
    vectors: list[np.ndarray | None] = []
    for candidate in pool:
        try:
            vector = None if candidate.embedding is None else np.asarray(candidate.embedding, np.float64).reshape(-1)
        except (TypeError, ValueError):
            vector = None
        vectors.append(vector if vector is not None and vector.size and np.all(np.isfinite(vector)) else None)
    sizes = [v.size for v in vectors if v is not None]
    if not sizes:
        return np.zeros((len(pool), 0)), np.zeros(len(pool), bool), np.zeros((0, 0))
    dim = max(set(sizes), key=lambda s: (sizes.count(s), -s))
    usable = np.array([v is not None and v.size == dim for v in vectors])
    matrix = np.zeros((len(pool), dim))
    for i, vector in enumerate(vectors):
        if usable[i]:
            matrix[i] = vector
    matrix = _normalise(matrix)
    known = np.zeros((0, dim))
    if labelled is not None:
        try:
            known = np.asarray(labelled, np.float64).reshape(-1, dim)
        except (TypeError, ValueError):
            known = np.zeros((0, dim))
        known = _normalise(known[np.all(np.isfinite(known), axis=1)])
    return matrix, usable, known


def _normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero); scaled by their largest value first, so huge finite
    values do not overflow."""
    peak = np.abs(matrix).max(axis=1, keepdims=True) if matrix.size else np.ones((matrix.shape[0], 1))
    matrix = matrix / np.where(peak > 0, peak, 1.0)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _min_distances(points: np.ndarray, to: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each row of ``points``, the squared distance to the nearest row of ``to`` (inf when ``to`` is empty)."""
    out = np.full(points.shape[0], np.inf)
    for start in range(0, to.shape[0], chunk):
        block = to[start:start + chunk]
        dist = (points ** 2).sum(1)[:, None] - 2.0 * points @ block.T + (block ** 2).sum(1)[None, :]
        out = np.minimum(out, np.maximum(dist, 0.0).min(axis=1))
    return out


def _diverse(pool, k, labelled, class_counts, rng, options: DiverseOptions) -> list[int]:
    n = len(pool)
    primary, secondary = np.array([image_score(c.scores) for c in pool]).reshape(n, 2).T
    # rank: score, then tie-break, then a seeded shuffle (never the input order alone, which may be sorted by name)
    order = np.lexsort((rng.permutation(n), -secondary, -primary))
    n_random = min(k, int(np.floor(options.random_fraction * k + 0.5)))
    n_quota = min(k - n_random, int(np.floor(options.quota_fraction * k)))
    pool_size = min(n, max(k, int(np.ceil(options.pool_factor * k))))
    in_pool = np.zeros(n, bool)
    in_pool[order[:pool_size]] = True
    matrix, usable, known = _embeddings(pool, labelled)
    nearest = _min_distances(matrix, known) if known.shape[0] else np.full(n, np.inf)

    chosen: list[int] = []
    taken = np.zeros(n, bool)

    def take(i: int) -> None:
        chosen.append(int(i))
        taken[i] = True
        if usable[i]:
            np.minimum(nearest, _min_distances(matrix, matrix[i:i + 1]), out=nearest)

    def k_center(allowed: np.ndarray, m: int) -> None:
        """Pick ``m`` of ``allowed`` (in rank order as the tie-break): farthest from everything known first."""
        ranked = [i for i in order if allowed[i] and not taken[i]]
        for _ in range(m):
            ranked = [i for i in ranked if not taken[i]]
            if not ranked:
                return
            with_vector = [i for i in ranked if usable[i]]
            if with_vector:  # argmax keeps the first (best-ranked) among equal distances
                take(with_vector[int(np.argmax(nearest[with_vector]))])
            else:
                take(ranked[0])

    for cls, slots in _class_quota(pool, class_counts, n_quota, options.class_threshold):
        predicting = np.array([cls in _predicted_classes(c, options.class_threshold) for c in pool])
        before = len(chosen)
        k_center(predicting & in_pool, slots)
        k_center(predicting, slots - (len(chosen) - before))
    k_center(in_pool, k - n_random - len(chosen))
    k_center(np.ones(n, bool), k - n_random - len(chosen))  # a pool too small after the quota: widen
    rest = [i for i in rng.permutation(n) if not taken[i]]
    for i in rest[:k - len(chosen)]:
        take(i)
    return chosen


def _class_quota(pool, class_counts, n_quota: int, threshold: float) -> list[tuple[int, int]]:
    """(class, slots) for the rare classes, rarest first: ``n_quota`` slots shared in proportion to 1 / (count+1)
    among the classes counted below the mean (labelled counts, else predicted counts over ``pool``)."""
    if n_quota <= 0:
        return []
    predicted: dict[int, int] = {}
    for candidate in pool:
        for cls in _predicted_classes(candidate, threshold):
            predicted[cls] = predicted.get(cls, 0) + 1
    counts: dict[int, float] = {}
    source = class_counts if class_counts else predicted
    for cls, count in dict(source).items():
        try:
            value = float(count)
            counts[int(cls)] = value if np.isfinite(value) and value > 0 else 0.0
        except (TypeError, ValueError, OverflowError):
            continue
    for cls in predicted:  # a predicted class never labelled is the rarest of all
        counts.setdefault(cls, 0.0)
    if len(counts) < 2:
        return []
    mean = sum(counts.values()) / len(counts)
    rare = sorted((cls for cls, count in counts.items() if count < mean and cls in predicted),
                  key=lambda cls: (counts[cls], cls))
    if not rare:
        return []
    weights = np.array([1.0 / (counts[cls] + 1.0) for cls in rare])
    shares = weights / weights.sum() * n_quota
    slots = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - slots), kind="stable")[:n_quota - slots.sum()]:
        slots[i] += 1
    return [(cls, int(s)) for cls, s in zip(rare, slots) if s > 0]
