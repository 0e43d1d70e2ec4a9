"""Ranking metrics on hand-computed cases, ties included."""

import math

import numpy as np
import pytest

from recsieve.errors import InvalidInputError
from recsieve.evaluation.metrics import (
    catalog_coverage,
    history_mask,
    rank_metrics,
    recall_coverage,
    tie_counts,
    top_k,
)


def f32(rows):
    return np.asarray(rows, np.float32)


def test_distinct_scores_hand_computed():
    # target 2 has score 0.5; items 0 (0.9) and 3 (0.7) are above -> 0-based position 2
    scores = f32([[0.9, 0.1, 0.5, 0.7, 0.2]])
    m = rank_metrics(scores, np.array([2]), ks=(1, 3))
    assert m["rank"][0] == 3
    assert m["hr@1"][0] == 0 and m["hr@3"][0] == 1
    assert m["ndcg@1"][0] == 0
    assert m["ndcg@3"][0] == pytest.approx(1 / math.log2(4))  # 0.5
    assert m["mrr"][0] == pytest.approx(1 / 3)


def test_ties_use_the_exact_expectation_over_the_tie_block():
    # one item above, target tied with two others -> position uniform on {1, 2, 3}
    scores = f32([[5.0, 1.0, 1.0, 1.0, 0.0, 0.5]])
    g, e, ok = tie_counts(scores, np.array([1]))
    assert (g[0], e[0], ok[0]) == (1, 2, True)
    m = rank_metrics(scores, np.array([1]), ks=(2, 3, 10))
    assert m["rank"][0] == pytest.approx(1 + 2 / 2 + 1)  # g + e/2 + 1 = 3
    assert m["hr@2"][0] == pytest.approx(1 / 3)  # only position 1 is inside the top 2
    assert m["hr@3"][0] == pytest.approx(2 / 3)
    assert m["hr@10"][0] == pytest.approx(1.0)
    expected_ndcg2 = (1 / math.log2(3)) / 3
    expected_ndcg10 = (1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 3
    assert m["ndcg@2"][0] == pytest.approx(expected_ndcg2)
    assert m["ndcg@10"][0] == pytest.approx(expected_ndcg10)
    assert m["mrr"][0] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)


def test_constant_scores_do_not_look_perfect():
    n = 1000
    scores = np.zeros((3, n), np.float32)
    m = rank_metrics(scores, np.array([0, 500, 999]), ks=(10, 20))
    assert np.allclose(m["hr@10"], 10 / n)
    assert np.allclose(m["hr@20"], 20 / n)
    assert np.allclose(m["rank"], (n + 1) / 2)
    harmonic = sum(1 / p for p in range(1, n + 1)) / n
    assert np.allclose(m["mrr"], harmonic)


def test_history_is_excluded_and_a_repeated_target_is_a_miss():
    scores = f32([[9.0, 8.0, 7.0, 1.0], [9.0, 8.0, 7.0, 1.0]])
    mask = history_mask([np.array([0, 1]), np.array([2])], 4)
    assert mask.tolist() == [[True, True, False, False], [False, False, True, False]]
    m = rank_metrics(scores, np.array([2, 2]), mask, ks=(1,))
    assert m["hr@1"][0] == 1.0 and m["rank"][0] == 1  # items 0, 1 removed from the ranking
    assert m["hr@1"][1] == 0.0 and m["mrr"][1] == 0.0 and m["rank"][1] == np.inf


def test_infinite_scores_tie_like_any_other():
    scores = f32([[1.0, -np.inf, -np.inf, -np.inf]])
    m = rank_metrics(scores, np.array([2]), ks=(2,))
    # position uniform on {1, 2, 3}: inside top 2 with probability 1/3
    assert m["hr@2"][0] == pytest.approx(1 / 3)


def test_nan_and_bad_shapes_are_errors():
    with pytest.raises(InvalidInputError, match="NaN"):
        rank_metrics(f32([[0.1, np.nan, 0.3]]), np.array([0]))
    with pytest.raises(InvalidInputError, match="floating"):
        rank_metrics(np.array([[1, 2, 3]]), np.array([0]))
    with pytest.raises(InvalidInputError):
        rank_metrics(f32([[0.1, 0.2]]), np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="ks"):
        rank_metrics(f32([[0.1, 0.2]]), np.array([0]), ks=(0,))


def test_metrics_match_a_brute_force_over_random_tie_breaks():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(5, 13)).astype(np.float32)  # many ties
    targets = rng.integers(0, 13, size=5)
    exact = rank_metrics(scores, targets, ks=(3,))
    hits = np.zeros(5)
    ndcg = np.zeros(5)
    trials = 4000
    for _ in range(trials):
        noise = rng.random(scores.shape)
        order = np.lexsort((noise, -scores), axis=1)  # random tie-break
        pos = np.argmax(order == targets[:, None], axis=1)
        hits += pos < 3
        ndcg += np.where(pos < 3, 1 / np.log2(pos + 2), 0)
    assert np.allclose(hits / trials, exact["hr@3"], atol=0.03)
    assert np.allclose(ndcg / trials, exact["ndcg@3"], atol=0.03)


def test_top_k_coverage_and_recall_coverage():
    scores = f32([[0.1, 0.9, 0.5, 0.5], [0.8, 0.1, 0.2, 0.3]])
    mask = history_mask([np.array([1]), np.array([], np.int64)], 4)
    top = top_k(scores, 2, mask)
    assert top.tolist() == [[2, 3], [0, 3]]  # ties by lower index; item 1 excluded for user 0
    assert catalog_coverage(top, 4) == pytest.approx(3 / 4)
    assert top_k(scores, 10).shape == (2, 4)
    got = recall_coverage([np.array([3, 1]), np.array([0])], np.array([1, 2]))
    assert got.tolist() == [1.0, 0.0]
