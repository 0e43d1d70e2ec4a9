"""Leave-one-out splits, seeded user subsets, and no leakage of held-out items."""

import numpy as np
import pytest

from recsieve.errors import InvalidInputError
from recsieve.evaluation.baselines import ItemKNN, Popularity, Transitions
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.harness import evaluate
from recsieve.evaluation.protocol import leave_one_out, training_sequences
from recsieve.types import Item


def make_dataset(sequences, n_items):
    items = tuple(Item(str(i), title=f"item {i}") for i in range(n_items))
    return Dataset(
        "toy",
        items,
        tuple(i.title for i in items),
        tuple(f"u{u}" for u in range(len(sequences))),
        tuple(np.asarray(s, np.int64) for s in sequences),
    )


def unique_targets_dataset(n_users=12, shared=6):
    """Users share items 0..shared-1; each user's validation and test items are its own."""
    rng = np.random.default_rng(3)
    seqs = []
    for u in range(n_users):
        history = rng.choice(shared, size=3 + u % 4, replace=False).tolist()
        seqs.append([*history, shared + 2 * u, shared + 2 * u + 1])  # valid item, test item
    return make_dataset(seqs, shared + 2 * n_users), shared


def test_split_positions_hand_checked():
    data = make_dataset([[0, 1, 2, 3, 4], [5, 4, 3], [1, 2, 3, 4, 5, 0]], 6)
    split = leave_one_out(data, min_len=5)
    assert split.kept.tolist() == [0, 2]  # user 1 has only 3 interactions
    assert [c.tolist() for c in split.contexts("test")] == [[0, 1, 2, 3], [1, 2, 3, 4, 5]]
    assert split.targets("test").tolist() == [4, 0]
    assert [c.tolist() for c in split.contexts("valid")] == [[0, 1, 2], [1, 2, 3, 4]]
    assert split.targets("valid").tolist() == [3, 5]
    assert [s.tolist() for s in training_sequences(split, "test")] == [
        [0, 1, 2, 3],
        [1, 2, 3, 4, 5],
    ]
    assert [s.tolist() for s in training_sequences(split, "valid")] == [[0, 1, 2], [1, 2, 3, 4]]
    assert leave_one_out(data, min_len=3).kept.tolist() == [0, 1, 2]


def test_bad_arguments():
    data = make_dataset([[0, 1, 2]], 3)
    with pytest.raises(InvalidInputError, match="min_len"):
        leave_one_out(data, min_len=2)
    with pytest.raises(InvalidInputError, match="min_len"):
        leave_one_out(data, min_len=5)  # nobody left
    with pytest.raises(InvalidInputError, match="users"):
        leave_one_out(data, min_len=3, users=0)
    with pytest.raises(InvalidInputError, match="stage"):
        training_sequences(leave_one_out(data, min_len=3), "train")


def test_user_subset_is_seeded_and_training_keeps_everyone():
    data = make_dataset(
        [[u % 7, (u + 1) % 7, (u + 2) % 7, (u + 3) % 7, (u + 4) % 7] for u in range(50)], 7
    )
    a = leave_one_out(data, users=10, seed=1)
    b = leave_one_out(data, users=10, seed=1)
    c = leave_one_out(data, users=10, seed=2)
    assert a.n_users == 10 and a.evaluated.tolist() == b.evaluated.tolist()
    assert a.evaluated.tolist() != c.evaluated.tolist()
    assert np.all(np.diff(a.evaluated) > 0)
    assert len(training_sequences(a)) == 50
    assert leave_one_out(data, users=500).n_users == 50


@pytest.mark.parametrize("stage", ["test", "valid"])
def test_held_out_items_never_reach_training(stage):
    data, shared = unique_targets_dataset()
    split = leave_one_out(data, min_len=4)
    held = set(split.targets("test").tolist())
    if stage == "valid":
        held |= set(split.targets("valid").tolist())
    train = training_sequences(split, stage)
    assert held.isdisjoint(np.concatenate(train).tolist())
    for ctx, target in zip(split.contexts(stage), split.targets(stage), strict=True):
        assert target not in ctx.tolist()
    held_idx = np.array(sorted(held))

    pop = Popularity()
    pop.fit(train, data.n_items)
    assert np.all(pop.score([np.array([0])])[0, held_idx] == 0)
    knn = ItemKNN()
    knn.fit(train, data.n_items)
    sim = knn._sim.toarray()
    assert np.all(sim[held_idx] == 0) and np.all(sim[:, held_idx] == 0)
    tr = Transitions()
    tr.fit(train, data.n_items)
    prob = tr._prob.toarray()
    assert np.all(prob[held_idx] == 0) and np.all(prob[:, held_idx] == 0)


class Spy:
    """Records everything the harness shows a scorer."""

    name = "spy"

    def fit(self, train_sequences, n_items):
        self.trained = [s.copy() for s in train_sequences]
        self.seen = []

    def score(self, contexts):
        self.seen.extend(c.copy() for c in contexts)
        return np.zeros((len(contexts), 30), np.float32)


def test_harness_shows_scorers_no_target():
    data, _ = unique_targets_dataset()
    spy = Spy()
    report = evaluate(data, [spy], min_len=4, progress=False)
    split = leave_one_out(data, min_len=4)
    targets = set(split.targets("test").tolist())
    assert targets.isdisjoint(np.concatenate(spy.trained).tolist())
    assert targets.isdisjoint(np.concatenate(spy.seen).tolist())
    assert len(spy.seen) == report["users"] == 12
    # constant scores: HR@10 is the expected share, averaged over each user's non-history items
    expected = np.mean([min(10, 30 - len(c)) / (30 - len(c)) for c in split.contexts("test")])
    assert report["results"][0]["hr@10"] == pytest.approx(expected)


def test_training_arrays_do_not_expose_the_held_out_items():
    data = make_dataset([[0, 1, 2, 3, 4]], 5)
    split = leave_one_out(data)
    for arrays in (training_sequences(split, "test"), split.contexts("test")):
        assert arrays[0].base is None  # a view would carry the target in its base buffer
