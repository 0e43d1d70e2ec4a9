"""Baseline scorers on hand-computed cases, SASRec on a learnable pattern, and the harness report."""

import json
import math

import numpy as np
import pytest

from recsieve.errors import InvalidInputError, ModelNotTrainedError
from recsieve.evaluation.baselines import CandidateScorer, ItemKNN, Popularity, Scorer, Transitions
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.harness import evaluate, format_table
from recsieve.evaluation.sasrec import SASRec
from recsieve.types import Item

A = np.asarray


def seqs(*rows):
    return [np.asarray(r, np.int64) for r in rows]


def cycle_dataset(n_items=24, n_users=60, length=18, seed=0):
    """Each user walks the cycle 0 -> 1 -> ... -> n-1 -> 0 from a random start."""
    rng = np.random.default_rng(seed)
    items = tuple(Item(str(i), title=f"item {i}") for i in range(n_items))
    sequences = tuple((rng.integers(n_items) + np.arange(length)) % n_items for _ in range(n_users))
    return Dataset(
        "cycle", items, tuple(i.title for i in items), tuple(map(str, range(n_users))), sequences
    )


@pytest.mark.parametrize("factory", [Popularity, ItemKNN, Transitions])
def test_scorer_contract(factory):
    scorer = factory()
    assert isinstance(scorer, Scorer)
    with pytest.raises(ModelNotTrainedError):
        scorer.score(seqs([0]))
    with pytest.raises(InvalidInputError, match="n_items"):
        scorer.fit(seqs([0, 1]), 0)
    with pytest.raises(InvalidInputError, match="train_sequences"):
        scorer.fit(seqs([0, 5]), 3)
    scorer.fit(seqs([0, 1, 2], [2, 1], [3]), 5)
    out = scorer.score(seqs([0], [1, 2], []))
    assert out.dtype == np.float32 and out.shape == (3, 5)
    assert np.array_equal(out, scorer.score(seqs([0], [1, 2], [])))


def test_popularity_counts():
    pop = Popularity()
    pop.fit(seqs([0, 1, 1], [1, 3]), 4)
    assert pop.score(seqs([2]))[0].tolist() == [1, 3, 0, 1]


def test_item_knn_cosine_and_recency_hand_computed():
    # users: {0,1}, {0,1,2}, {2,3}; counts c0=2 c1=2 c2=2 c3=1
    knn = ItemKNN(window=2, decay=0.5)
    knn.fit(seqs([0, 1], [0, 1, 2], [2, 3]), 4)
    sim = knn._sim.toarray()
    assert np.allclose(np.diag(sim), 0)
    assert sim[0, 1] == pytest.approx(2 / math.sqrt(2 * 2))
    assert sim[1, 2] == pytest.approx(1 / 2)
    assert sim[2, 3] == pytest.approx(1 / math.sqrt(2))
    assert sim[0, 3] == 0
    # context [3, 0, 2]: window 2 keeps [0, 2]; weights 0.5 (item 0), 1 (item 2, newest)
    got = knn.score(seqs([3, 0, 2]))[0]
    expected = 0.5 * sim[0] + 1.0 * sim[2]
    assert np.allclose(got, expected)
    with pytest.raises(InvalidInputError, match="decay"):
        ItemKNN(decay=0)


def test_transitions_hand_computed():
    tr = Transitions(window=2, decay=0.5)
    tr.fit(seqs([0, 1, 0, 2], [0, 1], [3, 3]), 4)
    # from 0: -> 1 twice, -> 2 once; from 1: -> 0 once; from 3: -> 3 once
    got = tr.score(seqs([2, 1, 0]))[0]  # window: [1, 0]; 0 newest (weight 1), 1 weight 0.5
    assert np.allclose(got, [0.5 * 1.0, 2 / 3, 1 / 3, 0.0])
    assert np.allclose(tr.score(seqs([]))[0], 0)


def test_sasrec_learns_a_cycle_far_above_chance():
    data = cycle_dataset()
    model = SASRec(hidden=32, max_len=20, epochs=25, batch_size=8, lr=3e-3, dropout=0.1, threads=2)
    report = evaluate(data, [model], progress=False)
    row = report["results"][0]
    # chance HR@10 is ~10/(24 - history) < 0.7; the next cycle item is fully determined
    assert row["hr@10"] > 0.95
    assert row["ndcg@10"] > 0.8
    assert model.history["epochs"] == 25
    assert (
        len(model.history["losses"]) == 25
        and model.history["losses"][-1] < model.history["losses"][0]
    )


def test_sasrec_is_seeded_and_leaves_global_state_alone():
    import torch

    data = seqs(*[(s + np.arange(8)) % 10 for s in range(10)])
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    a = SASRec(hidden=16, max_len=8, epochs=2, batch_size=4, threads=1, seed=5)
    b = SASRec(hidden=16, max_len=8, epochs=2, batch_size=4, threads=1, seed=5)
    a.fit(data, 10)
    b.fit(data, 10)
    ctx = seqs([1, 2, 3], [], [9])
    assert np.array_equal(a.score(ctx), b.score(ctx))
    assert a.score(ctx).dtype == np.float32 and a.score(ctx).shape == (3, 10)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)
    with pytest.raises(ModelNotTrainedError):
        SASRec().score(ctx)
    with pytest.raises(InvalidInputError, match="heads"):
        SASRec(hidden=10, heads=3)


def test_sasrec_time_budget_stops_training():
    data = seqs(*[(s + np.arange(30)) % 40 for s in range(200)])
    model = SASRec(hidden=16, max_len=30, epochs=1000, batch_size=4, time_budget=0.3)
    model.fit(data, 40)
    assert model.history["epochs"] < 1000 and model.history["seconds"] < 10


class TwoStage:
    """Recalls the items after the last one (cycle order) and scores only those."""

    name = "two-stage"

    def fit(self, train_sequences, n_items):
        self.n = n_items

    def candidates(self, contexts, n):
        return [
            (c[-1] + 2 + np.arange(min(n, 3))) % self.n for c in contexts
        ]  # skips the true next item

    def score(self, contexts):
        out = np.full((len(contexts), self.n), -np.inf, np.float32)
        for u, cand in enumerate(self.candidates(contexts, 3)):
            out[u, cand] = 1.0
        return out


def test_harness_report_shape_recall_coverage_and_table():
    data = cycle_dataset(n_items=24, n_users=20, length=8)
    two = TwoStage()
    assert isinstance(two, CandidateScorer) and not isinstance(Popularity(), CandidateScorer)
    report = evaluate(
        data, [Popularity(), Transitions(), two], users=10, seed=3, recall_n=5, progress=False
    )
    assert report["users"] == 10 and report["dataset"] == "cycle" and report["seed"] == 3
    assert report["protocol"] == "leave-one-out, full ranking, history excluded"
    json.dumps(report)
    rows = {r["system"]: r for r in report["results"]}
    keys = {
        "hr@10",
        "ndcg@10",
        "hr@20",
        "ndcg@20",
        "mrr",
        "coverage@10",
        "recall@5",
        "fit_seconds",
        "eval_seconds",
    }
    assert keys <= set(rows["popularity"])
    assert rows["transitions"]["hr@10"] == 1.0 and rows["transitions"]["recall_source"] == "scores"
    assert (
        rows["two-stage"]["recall@5"] == 0.0 and rows["two-stage"]["recall_source"] == "candidates"
    )
    # the target sits in a -inf block of 24 - 7 history - 3 candidates = 14 items: ranks 4..17
    assert rows["two-stage"]["hr@10"] == pytest.approx(7 / 14)
    table = format_table(report)
    assert "two-stage" in table and "ndcg@10" in table and "10 users" in table
    with pytest.raises(InvalidInputError, match="unique"):
        evaluate(data, [Popularity(), Popularity()], progress=False)
