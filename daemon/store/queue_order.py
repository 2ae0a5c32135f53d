"""The active-learning queue's order by a selection strategy, and how a score is stored (no TensorFlow, no I/O).

A scored row of ``active_queue`` keeps what :func:`odal.common.selection.select` needs to rank it again without
asking the model: the detections above :data:`~odal.common.uncertainty.SCORE_FLOOR` (score and class id, float32
pairs, at most :data:`MAX_DETECTIONS`), the image score of the ``diverse`` strategy and the model's embedding
(float32, at most :data:`MAX_EMBEDDING` values; the ``image_embedding`` output of odal's exports).

:func:`order` puts the unanswered rows in the order the annotators should see them:

* ``uncertainty``: scored rows by uncertainty (highest first), then unscored ones;
* ``diverse``: the first ``batch`` rows are what the strategy picks among the rows scored by the newest version
  (their embeddings are comparable with each other and with the answered rows of that version, which k-center
  keeps away from), then the other rows of that version by image score, then rows of older versions by their old
  score, then unscored rows;
* ``random``: a seeded shuffle.

The seed is the newest scored version, so the order is stable while a version serves.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping, Sequence

import numpy as np

from odal.common.selection import Candidate, image_score, select
from odal.common.uncertainty import SCORE_FLOOR, uncertainty

QUEUE_STRATEGIES = ("uncertainty", "diverse", "random")
MAX_DETECTIONS = 100
MAX_EMBEDDING = 4096
DEFAULT_BATCH = 50


def score_values(scores: Sequence[float], classes: Sequence[int], embedding) -> dict:
    """The columns a scored row stores: ``uncertainty``, ``score``, ``score_tiebreak``, ``detections``,
    ``embedding`` (None when the model gives none, or one that is not a finite vector of a sane size)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes, dtype=np.float32).reshape(-1)[:scores.size]
    keep = np.flatnonzero(scores[:classes.size] >= SCORE_FLOOR)[:MAX_DETECTIONS]
    primary, tiebreak = image_score(scores)
    return {"uncertainty": uncertainty(scores), "score": primary, "score_tiebreak": tiebreak,
            "detections": np.stack([scores[keep], classes[keep]], axis=1).astype("<f4").tobytes(),
            "embedding": _embedding_blob(embedding)}


def _embedding_blob(embedding) -> bytes | None:
    if embedding is None:
        return None
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if not 0 < vector.size <= MAX_EMBEDDING or not np.all(np.isfinite(vector)):
        return None
    return vector.astype("<f4").tobytes()


def candidate(row: Mapping) -> Candidate:
    """A stored row as a :class:`Candidate` keyed by its path."""
    pairs = np.frombuffer(row["detections"] or b"", dtype="<f4")
    pairs = pairs[:pairs.size - pairs.size % 2].reshape(-1, 2)
    embedding = np.frombuffer(row["embedding"], dtype="<f4") if row["embedding"] else None
    return Candidate(row["path"], tuple(pairs[:, 0].tolist()), tuple(int(c) for c in pairs[:, 1]), embedding)


def class_counts(boxes_json: Iterable[str], labels: Sequence[str]) -> dict[int, int]:
    """Labelled boxes per class id (the label map's ``labels``, by id) in the ledger's ``boxes`` JSON texts."""
    ids = {name: index + 1 for index, name in enumerate(labels)}
    counts = {index + 1: 0 for index in range(len(labels))}
    for text in boxes_json:
        try:
            boxes = json.loads(text)
        except (TypeError, ValueError):
            continue
        for box in boxes if isinstance(boxes, list) else ():
            label = ids.get(box.get("label")) if isinstance(box, dict) else None
            if label is not None:
                counts[label] += 1
    return counts


def order(rows: Sequence[Mapping], strategy: str, *, answered: Sequence[Mapping] = (), batch: int = DEFAULT_BATCH,
          counts: Mapping[int, int] | None = None) -> list[Mapping]:
    """The unanswered ``rows`` in ``strategy``'s order (module docstring); ``answered`` are the rows of answered
    images (their embeddings are the labelled ones), ``counts`` the labelled boxes per class id."""
    if strategy not in QUEUE_STRATEGIES:
        raise ValueError(f"queue strategy must be one of {', '.join(QUEUE_STRATEGIES)}, not {strategy!r}")
    rows = list(rows)
    newest = max((r["scored_version"] for r in rows if r["scored_version"] is not None), default=0)
    if strategy == "random":
        by_key = {r["path"]: r for r in rows}
        return [by_key[key] for key in select("random", [Candidate(r["path"]) for r in rows], len(rows),
                                               seed=newest)]
    if strategy == "uncertainty":
        scored = sorted((r for r in rows if r["uncertainty"] is not None), key=lambda r: (-r["uncertainty"],
                                                                                          r["path"]))
        return scored + sorted((r for r in rows if r["uncertainty"] is None), key=lambda r: r["path"])
    fresh = [r for r in rows if r["scored_version"] == newest and r["score"] is not None]
    labelled = [np.frombuffer(r["embedding"], dtype="<f4") for r in answered
                if r["scored_version"] == newest and r["embedding"]]
    picked = select("diverse", [candidate(r) for r in fresh], batch, seed=newest, class_counts=counts,
                    labeled_embeddings=_same_size(labelled))
    by_key = {r["path"]: r for r in fresh}
    first = [by_key[key] for key in picked]
    chosen = set(picked)
    rest = sorted((r for r in rows if r["path"] not in chosen),
                  key=lambda r: (r["path"] not in by_key, r["score"] is None and r["uncertainty"] is None,
                                 -(r["score"] if r["score"] is not None else (r["uncertainty"] or 0.0)),
                                 -(r["score_tiebreak"] or 0.0), r["path"]))
    return first + rest


def _same_size(vectors: list[np.ndarray]) -> np.ndarray | None:
    sizes = {v.size for v in vectors}
    if len(sizes) != 1:
        return None
    return np.stack(vectors)
