"""The cold-item protocol: a seeded share of the items never reaches training or a context, only
users whose target is cold are evaluated, and ``recsieve evaluate --cold-items`` runs it end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluate_cli import write_custom

from recsieve.cli import main
from recsieve.errors import InvalidInputError
from recsieve.evaluation.baselines import Popularity
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.harness import evaluate
from recsieve.evaluation.protocol import (
    choose_cold_items,
    cold_item_split,
    leave_one_out,
    training_sequences,
)
from recsieve.types import Item


def toy(n_users=60, n_items=40, length=8, seed=0):
    rng = np.random.default_rng(seed)
    items = tuple(Item(f"i{i}", title=f"item {i}") for i in range(n_items))
    seqs = tuple(np.array([(s + 3 * t) % n_items for t in range(length)], np.int64)
                 for s in rng.integers(0, n_items, n_users))
    return Dataset("toy", items, tuple(i.title for i in items), tuple(f"u{u}" for u in range(n_users)), seqs)


@pytest.mark.parametrize("stage", ["test", "valid"])
def test_cold_items_leave_training_and_contexts_but_stay_as_targets(stage):
    data = toy()
    split = cold_item_split(data, 0.25, stage=stage, seed=3)
    cold = set(split.cold.tolist())
    assert len(cold) == 10
    train = training_sequences(split, stage)
    assert len(train) == data.n_users  # every kept user still trains, minus their cold items
    assert cold.isdisjoint(np.concatenate(train).tolist())
    contexts, targets = split.contexts(stage), split.targets(stage)
    assert all(len(c) and cold.isdisjoint(c.tolist()) for c in contexts)
    assert set(targets.tolist()) <= cold
    # exactly the users whose target is cold (and who have something before it) are evaluated
    plain = leave_one_out(data)
    cut = 1 if stage == "test" else 2
    expected = [u for u, s in enumerate(plain.sequences)
                if int(s[-cut]) in cold and any(int(x) not in cold for x in s[:-cut])]
    assert split.evaluated.tolist() == expected and split.n_users == len(expected) > 0
    # each training sequence is the user's own prefix with the cold items taken out, order kept
    for full, seq in zip(plain.sequences, train, strict=True):
        assert seq.tolist() == [x for x in full[:-cut].tolist() if x not in cold]
    with pytest.raises(InvalidInputError, match="stage"):
        split.contexts("valid" if stage == "test" else "test")


def test_the_cold_set_is_seeded():
    a, b = choose_cold_items(100, 0.1, seed=7), choose_cold_items(100, 0.1, seed=7)
    assert a.tolist() == b.tolist() and a.size == 10 and np.all(np.diff(a) > 0)
    assert a.tolist() != choose_cold_items(100, 0.1, seed=8).tolist()
    assert choose_cold_items(100, 0.001).size == 1 and choose_cold_items(3, 0.99).size == 2
    data = toy()
    s1, s2 = cold_item_split(data, 0.3, seed=1), cold_item_split(data, 0.3, seed=1)
    assert s1.cold.tolist() == s2.cold.tolist() and s1.evaluated.tolist() == s2.evaluated.tolist()
    sub = cold_item_split(data, 0.3, seed=1, users=3)
    assert sub.n_users == 3 and set(sub.evaluated.tolist()) <= set(s1.evaluated.tolist())


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.2"])
def test_fraction_outside_the_open_interval_is_refused(bad):
    with pytest.raises(InvalidInputError, match="cold_items"):
        choose_cold_items(10, bad)


class Spy:
    """Records what the harness shows a scorer."""

    name = "spy"

    def fit(self, train_sequences, n_items):
        self.trained = [s.copy() for s in train_sequences]
        self.seen = []
        self.n_items = n_items

    def score(self, contexts):
        self.seen.extend(c.copy() for c in contexts)
        return np.zeros((len(contexts), self.n_items), np.float32)


def test_harness_report_of_the_cold_protocol():
    data = toy()
    spy = Spy()
    report = evaluate(data, [spy, Popularity()], cold_items=0.25, seed=3, progress=False, reference="spy")
    split = cold_item_split(data, 0.25, seed=3)
    cold = set(split.cold.tolist())
    assert cold.isdisjoint(np.concatenate(spy.trained).tolist())
    assert cold.isdisjoint(np.concatenate(spy.seen).tolist())
    assert report["cold_items"] == 0.25 and report["cold_item_count"] == 10
    assert report["cold_target_users"] == report["users"] == split.n_users == len(spy.seen)
    assert report["cold_target_users_available"] == split.n_users
    sub = evaluate(data, [Popularity()], cold_items=0.25, seed=3, users=2, progress=False)
    assert sub["cold_target_users"] == 2 and sub["cold_target_users_available"] == split.n_users
    assert "cold items" in report["protocol"] and any("text-zero-shot" in n for n in report["notes"])
    pop = report["results"][1]
    assert pop["vs_spy"]["ndcg@10"]["users"] == split.n_users  # paired on the cold-target users
    assert json.dumps(report)  # JSON-ready


def test_cli_cold_items_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    write_custom(data, n_items=30, n_users=60)
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--dataset", "custom", "--data-dir", str(data), "--systems",
               "popularity,transitions,text-zero-shot", "--cold-items", "0.3", "--seed", "1",
               "--cache-dir", str(tmp_path / "cache"), "--quiet", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["cold_items"] == 0.3 and report["cold_item_count"] == 9
    assert report["cold_target_users"] == report["users"] > 0
    assert "cold items" in report["protocol"]
    rows = {r["system"]: r for r in report["results"]}
    assert set(rows) == {"popularity", "transitions", "text-zero-shot"}
    assert all(0.0 <= r["ndcg@10"] <= r["hr@10"] <= 1.0 for r in rows.values())
    assert report["cache"]["text_vectors"] == "embedded and cached"
    printed = capsys.readouterr().out
    assert "users whose target is cold" in printed and "text-zero-shot is the baseline" in printed


@pytest.mark.parametrize("bad", ["1.5", "0", "-0.2", "1"])
def test_cli_refuses_a_cold_fraction_outside_0_1(tmp_path, capsys, bad):
    data = tmp_path / "data"
    write_custom(data)
    rc = main(["evaluate", "--dataset", "custom", "--data-dir", str(data), "--systems", "popularity",
               f"--cold-items={bad}", "--no-cache", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--cold-items" in err and str(float(bad)) in err and "between 0 and 1" in err
