"""Continual updates: learn() from new events, replay, atomic switch, failures leave the old head serving."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recsieve import Engine, EngineConfig, Event
from recsieve.catalog import read_items
from recsieve.engine.ranker import RankingHead
from recsieve.errors import ModelNotTrainedError
from recsieve.training import train_engine_ranker
from recsieve.training.learn import Learner, learn

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))
HOT = 5  # items everyone takes next in the second phase


def _categories() -> dict[str, list[str]]:
    by_cat: dict[str, list[str]] = {}
    for it in read_items(DEMO):
        by_cat.setdefault(str(it.metadata["category"]), []).append(it.id)
    return by_cat


def _walks(users: range, t0: float, seed: int) -> list[Event]:
    """Each user walks through one category in the catalog's order (phase one's behaviour)."""
    by_cat = _categories()
    rng = np.random.default_rng(seed)
    events = []
    for u in users:
        cat = sorted(by_cat)[u % len(by_cat)]
        start = int(rng.integers(0, len(by_cat[cat]) - 6))
        events += [Event(f"u{u}", item, "click", ts=t0 + 60 * t + u) for t, item in enumerate(by_cat[cat][start:start + 5])]
    return events


def _hot_items() -> list[str]:
    by_cat = _categories()
    return [by_cat[c][-1] for c in sorted(by_cat)][:HOT]


def _phase_two(users: range, t0: float, seed: int) -> list[Event]:
    """New behaviour: after two items of their category, users take one of a few hot items."""
    by_cat = _categories()
    hot = _hot_items()
    rng = np.random.default_rng(seed)
    events = []
    for u in users:
        cat = sorted(by_cat)[u % len(by_cat)]
        first = [i for i in by_cat[cat] if i not in hot][:10]
        picks = list(rng.choice(first, size=2, replace=False)) + [hot[int(rng.integers(HOT))]]
        events += [Event(f"n{u}", str(item), "click", ts=t0 + 60 * t + u) for t, item in enumerate(picks)]
    return events


@pytest.fixture()
def trained(tmp_path, embedder):
    eng = Engine.create(tmp_path / "engine", EngineConfig(index="flat", refresh_threads=0,
                                                         channel_weights=(1.0, 0.0, 0.3)), embedder=embedder)
    eng.upsert_items(read_items(DEMO))
    eng.record(_walks(range(120), 1000.0, 0))
    # the head stops early on validation (cv_folds=0), after 6 epochs here: these tests are about
    # learn()'s mechanics, which need a serving head that a few epochs on the new phase can beat
    # (the cross-validated default trains this one 15 epochs, and 3 more then do not beat it)
    train_engine_ranker(eng, tmp_path / "engine" / "head0", users=None, hidden=16, epochs=30, cv_folds=0,
                        progress=False)
    eng.use_model("head0", tier="fast", persist=True)
    yield eng
    eng.close()


def _mean_rank_of_hot(eng: Engine, head: RankingHead, users: list[str]) -> float:
    hot_rows = set(eng.catalog.rows(_hot_items()).tolist())
    ranks = []
    for u in users:
        view = eng.users.get(u)
        recalled = eng.recall_stage(view)
        order = recalled.cands.rows[np.argsort(-head.score(eng.features(view, recalled)), kind="stable")]
        ranks += [i for i, r in enumerate(order.tolist()) if r in hot_rows]
    return float(np.mean(ranks))


def test_learn_moves_scores_toward_the_new_behaviour(trained) -> None:
    eng = trained
    before = eng.ranking_head
    assert learn(eng)["reason"] == "no new events"
    eng.record(_phase_two(range(150), 9000.0, 1))
    # probe users: two category items each, none of the hot ones yet
    probes = _phase_two(range(1000, 1020), 20000.0, 2)
    eng.record([e for i, e in enumerate(probes) if i % 3 != 2])
    report = learn(eng, epochs=30)
    assert report["updated"], report
    assert report["new_examples"] > 0 and report["replay_examples"] > 0
    after = eng.ranking_head
    assert after is not before and eng.model_version.endswith(after.report["trained_at"])
    probe_users = sorted({e.user_id for e in probes})
    # same features, two heads: the updated one ranks the newly popular items higher
    assert _mean_rank_of_hot(eng, after, probe_users) < _mean_rank_of_hot(eng, before, probe_users) - 1.0
    assert after.report["journal_seq"] == eng.journal.last_seq
    assert learn(eng)["reason"] == "no new events"


def test_learned_head_survives_reopen(trained, embedder) -> None:
    eng = trained
    eng.record(_phase_two(range(150), 9000.0, 1))
    report = learn(eng, epochs=5)
    assert report["updated"]
    eng.save()
    eng.close()
    again = Engine.open(eng.directory, embedder=embedder)
    try:
        assert again.config.reranker_model == report["model"]
        assert again.ranking_head.report["journal_seq"] == report["to_seq"]
    finally:
        again.close()


def test_a_failed_update_leaves_the_previous_head_serving(trained, monkeypatch) -> None:
    eng = trained
    eng.record(_phase_two(range(150), 9000.0, 1))
    version, config_text = eng.model_version, (eng.directory / "recsieve.toml").read_text()
    expected = eng.recommend("n3", 5)

    def broken_save(self, folder):
        (Path(folder) / "ranker.npz").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(RankingHead, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        learn(eng, epochs=2)
    assert eng.model_version == version
    assert (eng.directory / "recsieve.toml").read_text() == config_text
    assert not list((eng.directory / "models").glob("head-*"))  # nothing half-written left in place
    assert eng.recommend("n3", 5) == expected


def test_learn_needs_a_trained_head(tmp_path, embedder) -> None:
    eng = Engine.create(tmp_path / "e", EngineConfig(index="flat", refresh_threads=0), embedder=embedder)
    try:
        with pytest.raises(ModelNotTrainedError):
            learn(eng)
    finally:
        eng.close()


def test_background_learner_updates_on_schedule(trained) -> None:
    eng = trained
    eng.record(_phase_two(range(150), 9000.0, 1))
    learner = Learner(eng, interval_s=0.05, budget_s=5.0)
    try:
        for _ in range(400):
            if learner.updates:
                break
            import time

            time.sleep(0.05)
    finally:
        learner.stop(timeout=30)
    assert learner.updates == 1 and eng.ranking_head.report["journal_seq"] == eng.journal.last_seq


def test_learn_cli(trained, embedder, capsys, monkeypatch) -> None:
    import json

    from recsieve.cli import main

    eng = trained
    eng.record(_phase_two(range(150), 9000.0, 1))
    eng.save()
    eng.close()
    assert main(["learn", str(eng.directory), "--epochs", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["updated"] and report["new_examples"] > 0
    assert EngineConfig.load(eng.directory).reranker_model == report["model"]
    assert main(["learn", str(eng.directory)]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "no new events"
    with Engine.open(eng.directory, embedder=embedder) as again:
        again.record(_phase_two(range(150), 20000.0, 2))
        again.save()
    assert main(["learn", str(eng.directory), "--epochs", "1", "--users", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 40  # a bounded sample of the 150 users with new events
