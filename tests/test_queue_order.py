"""odal.daemon.store.queue_order: what a scored row stores, and the queue's order by strategy (no server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odal.daemon.store.queue_order import MAX_EMBEDDING, candidate, class_counts, order, score_values


def _row(path: str, version: int | None, scores=(), classes=(), embedding=None) -> dict:
    if version is None:
        return {"path": path, "scored_version": None, "uncertainty": None, "score": None, "score_tiebreak": None,
                "detections": None, "embedding": None}
    return {"path": path, "scored_version": version, **score_values(scores, classes or [1] * len(scores), embedding)}


def test_a_stored_score_gives_back_the_detections_above_the_floor_and_the_embedding():
    row = _row("a", 1, (0.9, 0.5, 0.01), (2, 1, 3), np.arange(4, dtype=np.float32))
    back = candidate(row)
    assert back.scores == (pytest.approx(0.9), 0.5) and back.classes == (2, 1)
    assert back.embedding.tolist() == [0, 1, 2, 3] and row["score"] == 1.0 and row["uncertainty"] == 1.0


def test_an_embedding_that_is_not_a_finite_vector_of_a_sane_size_is_not_stored():
    for bad in (np.array([1.0, np.nan]), np.zeros(MAX_EMBEDDING + 1), np.zeros(0)):
        assert score_values((0.5,), (1,), bad)["embedding"] is None


def test_class_counts_count_labelled_boxes_by_label_map_id_and_skip_what_is_not_a_box():
    texts = [json.dumps([{"label": "cat"}, {"label": "dog"}, {"label": "cat"}]), "not json", json.dumps({"a": 1}),
             json.dumps([{"label": "bird"}, 7])]
    assert class_counts(texts, ("cat", "dog", "eel")) == {1: 2, 2: 1, 3: 0}


def test_diverse_ranks_the_newest_versions_rows_first_then_older_scores_then_unscored():
    rows = [_row("old-sure", 1, (0.99,)), _row("unscored", None), _row("old-unsure", 1, (0.5,)),
            _row("new-sure", 2, (0.95,), embedding=np.ones(3)), _row("new-unsure", 2, (0.6,), embedding=-np.ones(3))]
    ranked = [r["path"] for r in order(rows, "diverse", batch=1)]
    assert ranked == ["new-unsure", "new-sure", "old-unsure", "old-sure", "unscored"]
    assert [r["path"] for r in order(rows, "uncertainty")][:2] == ["old-unsure", "new-unsure"]  # any version
    with pytest.raises(ValueError, match="uncertainty, diverse, random"):
        order(rows, "best")


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=50, deadline=None, database=None)
@given(answers=st.lists(st.tuples(st.lists(floats, max_size=120), st.lists(st.integers(-5, 2**20), max_size=120),
                                  st.one_of(st.none(), st.lists(floats, max_size=8).map(np.array))), max_size=12),
       strategy=st.sampled_from(["uncertainty", "diverse", "random"]), batch=st.integers(1, 20))
def test_any_model_answer_is_stored_within_its_bounds_and_every_row_is_ordered_once(answers, strategy, batch):
    """Whatever a server answers (NaN, inf, 120 boxes, odd class ids, any embedding), the stored row holds at most
    100 detections and a finite embedding or none, and the order lists every row exactly once."""
    rows = [{"path": f"p{i}", "scored_version": 1 + i % 2, **score_values(scores, classes, embedding)}
            for i, (scores, classes, embedding) in enumerate(answers)]
    for row in rows:
        assert len(row["detections"]) <= 100 * 8 and 0.0 <= row["uncertainty"] <= 1.0
        back = candidate(row)
        assert back.embedding is None or np.all(np.isfinite(back.embedding))
    ranked = order(rows, strategy, batch=batch, answered=rows[:2])
    assert sorted(r["path"] for r in ranked) == sorted(r["path"] for r in rows)
