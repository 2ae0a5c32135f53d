"""odal.common.selection: which images the strategies pick, and that no candidate list makes them fail.

Property tests (hypothesis) feed any candidates -- empty, NaN and infinite scores, missing or malformed
embeddings, repeated keys, k beyond the pool -- and check the contract the daemon and `odal simulate` rely on:
min(k, distinct keys) distinct keys from the candidates, the same ones for the same seed.
``ODAL_FUZZ_LONG=1`` runs 50x more examples.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odal.common.selection import STRATEGIES, Candidate, DiverseOptions, image_score, select

EXAMPLES = 5000 if os.environ.get("ODAL_FUZZ_LONG") else 100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
EXACT = DiverseOptions(random_fraction=0.0, quota_fraction=0.0)  # no random part: the picks are exact

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
embedding = st.one_of(
    st.none(),
    st.lists(floats, min_size=0, max_size=6).map(np.array),
    st.lists(st.floats(-10, 10), min_size=4, max_size=4).map(np.array),  # the common size: k-center runs
)
candidate = st.builds(
    Candidate,
    key=st.integers(0, 40),  # repeats happen: they count once
    scores=st.lists(floats, max_size=8).map(tuple),
    classes=st.lists(st.integers(-3, 5), max_size=8).map(tuple),
    embedding=embedding,
)


@FUZZ
@given(name=st.sampled_from(STRATEGIES), candidates=st.lists(candidate, max_size=30), k=st.integers(-2, 40),
       seed=st.integers(0, 2**32 - 1),
       labelled=st.one_of(st.none(), st.lists(st.lists(st.floats(-10, 10), min_size=4, max_size=4), max_size=5)),
       counts=st.one_of(st.none(), st.dictionaries(st.integers(-3, 5), st.one_of(st.integers(-5, 50), floats))))
def test_any_candidates_give_k_distinct_keys_of_the_pool_the_same_for_the_same_seed(
        name, candidates, k, seed, labelled, counts):
    """Never raises; returns min(k, distinct keys) distinct keys, all candidates', identical on a second call."""
    chosen = select(name, candidates, k, labeled_embeddings=labelled, class_counts=counts, seed=seed)
    keys = {c.key for c in candidates}
    assert len(chosen) == len(set(chosen)) == max(0, min(k, len(keys)))
    assert set(chosen) <= keys
    again = select(name, list(candidates), k, labeled_embeddings=labelled, class_counts=counts, seed=seed)
    assert again == chosen


def test_an_unknown_strategy_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="random, uncertainty, diverse"):
        select("smart", [Candidate("a")], 1, seed=0)


def test_uncertainty_takes_the_least_confident_images_first():
    candidates = [Candidate("sure", (0.99, 0.01)), Candidate("coin", (0.5, 0.9)), Candidate("half", (0.75,))]
    assert select("uncertainty", candidates, 2, seed=0) == ["coin", "half"]


def test_image_score_is_the_most_uncertain_box_and_no_detection_scores_high():
    assert image_score([0.5, 0.99, 0.9]) == (1.0, pytest.approx((1.0 + 0.2 + 0.02) / 3))
    assert image_score([]) == image_score([0.01, float("nan")]) == (1.0, 1.0)
    assert image_score([0.95])[0] == pytest.approx(0.1)


def test_diverse_takes_one_of_a_cluster_of_near_duplicates_not_all():
    """Eight near-identical coin tosses and eight distinct, slightly less uncertain images: a batch of four takes
    one duplicate and three others (uncertainty alone would take four duplicates)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    dupes = [Candidate(f"dup{i}", (0.5,), (1,), base + 1e-3 * rng.normal(size=16)) for i in range(8)]
    others = [Candidate(f"other{i}", (0.6,), (1,), rng.normal(size=16)) for i in range(8)]
    chosen = select("diverse", dupes + others, 4, seed=1, options=EXACT)
    assert sum(key.startswith("dup") for key in chosen) == 1
    assert sum(key.startswith("dup") for key in select("uncertainty", dupes + others, 4, seed=1)) == 4


def test_diverse_avoids_images_like_those_already_labelled():
    rng = np.random.default_rng(2)
    seen = rng.normal(size=(3, 8))
    like_seen = [Candidate(f"seen{i}", (0.5,), (1,), seen[i] + 1e-3) for i in range(3)]
    new = [Candidate(f"new{i}", (0.6,), (1,), rng.normal(size=8)) for i in range(3)]
    chosen = select("diverse", like_seen + new, 3, labeled_embeddings=seen, seed=0, options=EXACT)
    assert sorted(chosen) == ["new0", "new1", "new2"]


def test_diverse_keeps_to_the_uncertain_pool():
    """Far-out but confidently scored images are outside the pool (4 x k) and are not picked."""
    rng = np.random.default_rng(3)
    sure = [Candidate(f"sure{i}", (0.999,), (1,), 100 * rng.normal(size=8)) for i in range(20)]
    unsure = [Candidate(f"unsure{i}", (0.5 + i / 100,), (1,), rng.normal(size=8)) for i in range(8)]
    assert all(key.startswith("unsure") for key in select("diverse", sure + unsure, 2, seed=0, options=EXACT))


def test_diverse_gives_a_quota_to_a_rarely_labelled_predicted_class():
    """Class 2 has 5 labelled boxes, class 1 has 500: a batch of 10 includes class-2 images even though they
    are less uncertain than every class-1 image."""
    common = [Candidate(f"c1-{i}", (0.5, 0.02), (1, 2), np.eye(40)[i]) for i in range(30)]
    rare = [Candidate(f"c2-{i}", (0.8,), (2,), np.eye(40)[30 + i]) for i in range(5)]
    options = DiverseOptions(random_fraction=0.0, quota_fraction=0.2)
    chosen = select("diverse", common + rare, 10, class_counts={1: 500, 2: 5}, seed=0, options=options)
    assert sum(key.startswith("c2") for key in chosen) == 2
    balanced = select("diverse", common + rare, 10, class_counts={1: 500, 2: 500}, seed=0, options=options)
    assert not any(key.startswith("c2") for key in balanced)


def test_diverse_fills_a_random_share_from_outside_the_pool():
    """15 % of a batch of 20 (3 images) are drawn from all the candidates, the rest from the uncertain pool."""
    sure = [Candidate(f"sure{i}", (0.999,), (1,), np.eye(400)[i]) for i in range(300)]
    unsure = [Candidate(f"unsure{i}", (0.5,), (1,), np.eye(400)[300 + i]) for i in range(100)]
    chosen = select("diverse", sure + unsure, 20, seed=5, options=DiverseOptions(quota_fraction=0.0))
    outside = [key for key in chosen if key.startswith("sure")]
    assert chosen[-3:] != [] and 1 <= len(outside) <= 3 and set(outside) <= set(chosen[-3:])


def test_candidates_without_embeddings_still_fill_the_batch_by_score():
    candidates = [Candidate("a", (0.5,)), Candidate("b", (0.9,)), Candidate("c", (0.6,), (), np.ones(3))]
    assert select("diverse", candidates, 3, seed=0, options=EXACT) == ["c", "a", "b"]
