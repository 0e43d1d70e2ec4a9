"""The learned ranking head: features, training, persistence, and serving it inside the engine."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recsieve import Engine, EngineConfig, Event
from recsieve.catalog import read_items
from recsieve.engine.ranker import (
    RANKER_FILE,
    RankingHead,
    candidate_features,
    feature_names,
    listwise_ndcg,
)
from recsieve.errors import InvalidInputError, StoreError
from recsieve.training import fit_head, train_engine_ranker
from recsieve.training.examples import RankingGroup
from recsieve.training.head import fit_head_cv, user_folds
from recsieve.types import Candidates

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))


def _cands(rows, scores=None) -> Candidates:
    rows = np.asarray(rows, np.int64)
    scores = np.linspace(1.0, 0.5, len(rows)) if scores is None else scores
    return Candidates(rows, np.asarray(scores, np.float32))


def test_features_by_hand() -> None:
    vectors = np.eye(4, dtype=np.float32)
    fused = _cands([2, 0, 3])
    lists = [_cands([0, 2], [0.8, 0.4]), _cands([3], [2.0])]
    x = candidate_features(fused, lists, vectors, profile=np.array([0, 0, 2.0, 0]), recent_rows=[1, 2],
                           instruction=None, popularity=np.array([0.3, 0.0, 0.1]))
    names = feature_names(["a", "b"])
    assert x.shape == (3, len(names)) and x.dtype == np.float32
    col = {n: x[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(col["a.inv_rank"], [1 / np.sqrt(2), 1.0, 0.0])
    np.testing.assert_allclose(col["a.score"], [0.5, 1.0, 0.0])  # normalised by the channel's top score
    np.testing.assert_allclose(col["b.inv_rank"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(col["fused.inv_rank"], 1 / np.sqrt([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(col["sim.profile"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(col["sim.last"], [1.0, 0.0, 0.0])  # last recent item is row 2
    np.testing.assert_allclose(col["sim.recent_max"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(col["sim.short_term"], [1 / np.sqrt(2), 0.0, 0.0])
    assert not col["has_instruction"].any() and not col["sim.instruction"].any()
    np.testing.assert_allclose(col["popularity"], np.log1p([3000.0, 0.0, 1000.0]), rtol=1e-6)
    np.testing.assert_allclose(col["history_len"], np.log1p(2.0))


def test_features_of_a_cold_request_with_an_instruction() -> None:
    vectors = np.eye(3, dtype=np.float32)
    x = candidate_features(_cands([1, 2]), [_cands([1, 2])], vectors, profile=None, recent_rows=[],
                           instruction=np.array([0, 3.0, 0]), popularity=np.zeros(2))
    col = dict(zip(feature_names(["v"]), x.T))
    np.testing.assert_allclose(col["sim.instruction"], [1.0, 0.0])
    assert col["has_instruction"].all() and not col["sim.profile"].any() and not col["sim.last"].any()


def test_listwise_ndcg_by_hand() -> None:
    assert listwise_ndcg(np.array([3.0, 2.0, 1.0]), 0) == 1.0
    assert listwise_ndcg(np.array([3.0, 2.0, 1.0]), 1) == pytest.approx(1 / np.log2(3))
    # a tie between first and second place averages the two positions' gains
    assert listwise_ndcg(np.array([2.0, 2.0, 1.0]), 1) == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert listwise_ndcg(np.arange(20.0)[::-1], 15) == 0.0


def _planted(n_groups: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Groups whose target is the candidate with the largest ``a.score * popularity`` (an interaction)."""
    rng = np.random.default_rng(seed)
    groups, targets = [], []
    for _ in range(n_groups):
        x = rng.normal(size=(30, len(feature_names(["a"])))).astype(np.float32)
        groups.append(x)
        targets.append(int(np.argmax(x[:, 1] * x[:, 9])))
    return groups, targets


def test_fit_head_learns_a_planted_signal() -> None:
    train, valid, test = _planted(600, 0), _planted(100, 1), _planted(200, 2)
    head = fit_head(*train, feature_names(["a"]), valid=valid, hidden=16, epochs=40)
    learned = np.mean([listwise_ndcg(head.score(g), t) for g, t in zip(*test)])
    order = np.mean([listwise_ndcg(-np.arange(30.0), t) for t in test[1]])  # the given order
    assert learned > 0.6 > order + 0.3


def test_fit_head_selecting_by_loss_keeps_the_epoch_of_lowest_validation_loss() -> None:
    """An over-fitting head (40 training groups, a large step): validation loss and NDCG@10
    peak at different epochs, and each ``select`` keeps its own."""
    train, valid = _planted(40, 0), _planted(60, 1)
    names = feature_names(["a"])
    kw = dict(valid=valid, hidden=32, epochs=30, lr=0.03, batch=16)
    by_loss, by_ndcg = fit_head(*train, names, select="loss", **kw), fit_head(*train, names, **kw)
    losses, ndcgs = by_loss.report["valid_loss_history"], by_ndcg.report["valid_history"]
    assert by_loss.report["best_epoch"] == int(np.argmin(losses)) + 1
    assert by_ndcg.report["best_epoch"] == int(np.argmax(ndcgs)) + 1
    assert by_loss.report["best_epoch"] != by_ndcg.report["best_epoch"]  # the two rules differ here
    # the kept head's loss, recomputed by hand from its scores: mean of log-sum-exp minus the target's score
    by_hand = np.mean([np.log(np.exp(by_loss.score(g).astype(np.float64)).sum()) - by_loss.score(g)[t]
                       for g, t in zip(*valid)])
    assert by_loss.report["valid_loss"] == pytest.approx(by_hand, rel=1e-5)
    assert by_loss.report["valid_loss"] == pytest.approx(min(losses), abs=1e-5)
    with pytest.raises(InvalidInputError, match="select"):
        fit_head(*train, names, valid=valid, epochs=1, select="auc")


def test_fit_head_cv_picks_the_epoch_count_of_the_best_mean_curve_and_refits_on_everything() -> None:
    """The over-fitting toy of the test above, in 4 folds: each fold's curve is its own head's,
    the epoch count is the argmax of their weighted mean, and the head returned is fit_head on
    all groups for that many epochs."""
    groups, targets = _planted(80, 0)
    names = feature_names(["a"])
    folds = np.arange(80) % 4
    kw = dict(hidden=32, lr=0.03, batch=16, epochs=20)
    head = fit_head_cv(groups, targets, names, folds, **kw)
    curves = []
    for f in range(4):
        tr, va = folds != f, folds == f
        part = fit_head([g for g, k in zip(groups, tr) if k], [t for t, k in zip(targets, tr) if k], names,
                        valid=([g for g, k in zip(groups, va) if k], [t for t, k in zip(targets, va) if k]), **kw)
        curves.append(part.report["valid_history"])
    best = int(np.argmax(np.mean(curves, axis=0))) + 1  # equal folds: the plain mean
    assert head.report["best_epoch"] == best and head.report["cv_folds"] == 4
    assert head.report["epochs"] == best < 20  # it over-fits: the count is cut short
    refit = fit_head(groups, targets, names, **{**kw, "epochs": best})
    np.testing.assert_allclose(head.score(groups[0]), refit.score(groups[0]), rtol=1e-6)
    with pytest.raises(InvalidInputError, match="folds"):
        fit_head_cv(groups, targets, names, np.zeros(80, int), **kw)
    with pytest.raises(InvalidInputError, match="folds"):
        fit_head_cv(groups, targets, names, folds[:10], **kw)


def test_user_folds_keep_each_users_groups_together() -> None:
    groups = [RankingGroup(f"u{i % 13}", np.zeros((3, 2), np.float32), 0, np.arange(3), "") for i in range(50)]
    folds = user_folds(groups, 5, seed=0)
    by_user: dict[str, set[int]] = {}
    for g, f in zip(groups, folds):
        by_user.setdefault(g.user_id, set()).add(int(f))
    assert all(len(v) == 1 for v in by_user.values())
    assert set(folds.tolist()) == set(range(5))
    one = [g for g in groups if g.user_id == "u0"]
    assert len(one) > 1 and set(user_folds(one, 5, seed=0).tolist()) == {0}  # one user: one fold


def test_average_of_heads_scores_their_mean_and_survives_a_save(tmp_path: Path) -> None:
    """Heads fitted on different splits and seeds (each its own normalisation) average exactly."""
    train = _planted(300, 0)
    names = feature_names(["a"])
    heads = [fit_head(*_planted(300, s), names, hidden=8, epochs=5, seed=s) for s in range(3)]
    assert not np.allclose(heads[0].mean, heads[1].mean)  # the folding is exercised
    avg = RankingHead.average(heads)
    for g in train[0][:20]:
        assert np.allclose(avg.score(g), np.mean([h.score(g) for h in heads], axis=0), atol=1e-4)
    avg.save(tmp_path)
    assert np.allclose(RankingHead.load(tmp_path).score(train[0][0]), avg.score(train[0][0]), atol=1e-6)
    with pytest.raises(InvalidInputError, match="heads"):
        RankingHead.average([])
    other = fit_head(*_planted(50, 9), feature_names(["b"]), hidden=8, epochs=1)
    with pytest.raises(InvalidInputError, match="heads\\[1\\].features"):
        RankingHead.average([heads[0], other])


def test_a_head_over_a_wider_layout_scores_the_same() -> None:
    """A head trained before a feature existed serves in the new layout with weight 0 on it."""
    groups, targets = _planted(200, 4)
    names = feature_names(["a"])
    head = fit_head(groups, targets, names, hidden=8, epochs=3)
    wider = (*names[:2], "new.first", *names[2:], "new.last")
    widened = head.with_features(wider)
    assert widened.features == wider
    rng = np.random.default_rng(0)
    for g in groups[:10]:
        x = np.insert(g, 2, rng.normal(size=len(g)), axis=1)
        x = np.concatenate([x, rng.normal(size=(len(g), 1))], axis=1).astype(np.float32)
        np.testing.assert_allclose(widened.score(x), head.score(g), rtol=1e-6, atol=1e-6)
    reordered = head.with_features(names[::-1])  # columns are matched by name
    np.testing.assert_allclose(reordered.score(groups[0][:, ::-1]), head.score(groups[0]), rtol=1e-6, atol=1e-6)
    with pytest.raises(InvalidInputError, match="features"):
        head.with_features(names[1:])  # a feature the head needs is not in the layout


def test_fit_head_validates() -> None:
    names = feature_names(["a"])
    with pytest.raises(InvalidInputError, match="targets\\[0\\]"):
        fit_head([np.zeros((3, len(names)), np.float32)], [5], names)
    with pytest.raises(InvalidInputError, match="groups\\[0\\]"):
        fit_head([np.zeros((3, 2), np.float32)], [0], names)
    with pytest.raises(InvalidInputError, match="groups"):
        fit_head([], [], names)


def test_save_load_roundtrip_and_corruption(tmp_path: Path) -> None:
    groups, targets = _planted(50, 3)
    head = fit_head(groups, targets, feature_names(["a"]), hidden=8, epochs=2)
    head.save(tmp_path / "m")
    loaded = RankingHead.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(groups[0]), head.score(groups[0]))
    assert loaded.features == head.features
    with pytest.raises(InvalidInputError, match="features"):
        loaded.score(np.zeros((2, 3), np.float32))
    meta = json.loads((tmp_path / "m" / RANKER_FILE).read_text())
    meta["features"] = meta["features"][:-1]  # weights no longer fit the layout
    (tmp_path / "m" / RANKER_FILE).write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="shape"):
        RankingHead.load(tmp_path / "m")
    (tmp_path / "m" / RANKER_FILE).write_text("{not json")
    with pytest.raises(StoreError):
        RankingHead.load(tmp_path / "m")
    head.save(tmp_path / "n")
    data = (tmp_path / "n" / "ranker.npz").read_bytes()
    (tmp_path / "n" / "ranker.npz").write_bytes(data[: len(data) // 2])  # half-written weights
    with pytest.raises(StoreError):
        RankingHead.load(tmp_path / "n")


@pytest.fixture(scope="module")
def shop(tmp_path_factory, embedder):
    """An engine over the demo catalog whose users walk through one category in a fixed order.

    Its fusion ignores the transitions channel (weight 0), so recall's own order misses the
    pattern; the head sees every channel's ranks and must learn to trust transitions.
    """
    root = tmp_path_factory.mktemp("shop")
    config = EngineConfig(index="flat", refresh_threads=0, channel_weights=(1.0, 0.0, 0.3))
    eng = Engine.create(root / "engine", config, embedder=embedder)
    items = read_items(DEMO)
    eng.upsert_items(items)
    by_cat: dict[str, list[str]] = {}
    for it in items:
        by_cat.setdefault(str(it.metadata["category"]), []).append(it.id)
    rng = np.random.default_rng(0)
    events = []
    for u in range(160):
        cat = sorted(by_cat)[u % len(by_cat)]
        start = int(rng.integers(0, len(by_cat[cat]) - 6))
        for t, item in enumerate(by_cat[cat][start:start + 6]):  # the catalog's order within the category
            events.append(Event(f"u{u}", item, "click", ts=1000.0 + 60 * t + u))
    eng.record(events)
    report = train_engine_ranker(eng, root / "model", users=None, hidden=16, epochs=30, progress=False)
    yield eng, root / "model", report
    eng.close()


def test_examples_see_statistics_of_everyone_but_their_user(shop) -> None:
    from recsieve.training.examples import (
        engine_sequences,
        groups_for,
        observe_steps,
        ranking_groups,
    )

    eng, _, _ = shop
    sequences = engine_sequences(eng)
    groups, tried = ranking_groups(eng, sequences, users=5, steps_per_user=2, seed=3)
    assert tried == 5 and groups
    for user in sorted({g.user_id for g in groups}):
        others = eng.new_statistics()
        for u in sorted(sequences):
            if u != user:
                observe_steps(eng, others, sequences[u])
        lasts = [t for t in range(1, len(sequences[user]))][-2:]
        want = groups_for(eng, sequences, {user: lasts}, others)
        got = [g for g in groups if g.user_id == user]
        assert [g.target for g in got] == [g.target for g in want]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.features, b.features, rtol=1e-6)
    # without leaving the user out, the user's own next step is counted: features differ
    everyone = eng.new_statistics()
    for u in sorted(sequences):
        observe_steps(eng, everyone, sequences[u])
    user = groups[0].user_id
    leaky = groups_for(eng, sequences, {user: [t for t in range(1, len(sequences[user]))][-2:]}, everyone)
    assert any(not np.allclose(a.features, b.features) for a, b in
               zip([g for g in groups if g.user_id == user], leaky))


def test_trained_head_beats_recall_order_on_held_out_users(shop) -> None:
    _, _, report = shop
    assert report["valid_users"] > 0 and report["train_users"] > report["valid_users"]
    assert report["valid_ndcg@10_head"] > report["valid_ndcg@10_recall_order"] + 0.2
    # the default chose the head's epoch count by 5 folds over the training users, not on validation
    assert report["cv_folds"] == 5 and report["epochs"] == report["best_epoch"]
    assert report["cv_history"][report["best_epoch"] - 1] == max(report["cv_history"])


@pytest.mark.parametrize("bad", [1, -2, 2.5, True])
def test_train_engine_ranker_refuses_a_bad_fold_count(shop, tmp_path, bad) -> None:
    eng, _, _ = shop
    with pytest.raises(InvalidInputError, match="cv_folds"):
        train_engine_ranker(eng, tmp_path / "m", cv_folds=bad, progress=False)
    assert not (tmp_path / "m").exists()


def test_engine_serves_the_head(shop) -> None:
    eng, model, _ = shop
    eng.record([Event("x", "kit-001", "click"), Event("x", "kit-002", "click")])
    view = eng.users.get("x")
    plain_rows, _ = eng.rank(view, rerank=False)
    before = eng.recommend("x", 5)
    assert eng.recommend("x", 5) == before  # now cached (admitted on the second request)
    eng.use_model(model, tier="fast")
    try:
        assert eng.reranker is None and eng.ranking_head is not None
        rows, scores = eng.rank(view)
        assert set(rows.tolist()) == set(plain_rows.tolist())
        recalled = eng.recall_stage(view)
        expected = eng.ranking_head.score(eng.features(view, recalled))
        order = recalled.cands.rows[np.argsort(-expected, kind="stable")]
        np.testing.assert_array_equal(rows, order)
        after = eng.recommend("x", 5)
        assert [r.item_id for r in after] == [eng.catalog.item_id(int(r)) for r in rows[:5]]
        assert [r.item_id for r in after] != [r.item_id for r in before]  # not the cached recall-order list
    finally:
        eng.use_model(None)
    assert [r.item_id for r in eng.recommend("x", 5)] == [r.item_id for r in before]


def test_a_model_that_fails_to_load_leaves_the_old_one_serving(shop, tmp_path: Path) -> None:
    eng, model, _ = shop
    eng.use_model(model, tier="fast")
    try:
        version = eng.model_version
        expected = eng.recommend("u0", 5)
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / RANKER_FILE).write_text("{}")
        with pytest.raises(StoreError):
            eng.use_model(bad)
        assert eng.model_version == version and eng.ranking_head is not None
        assert eng.recommend("u0", 5) == expected
    finally:
        eng.use_model(None)


def test_a_head_trained_for_other_channels_is_refused(shop, tmp_path: Path, embedder) -> None:
    _, model, _ = shop
    eng = Engine.create(tmp_path / "e", EngineConfig(index="flat", refresh_threads=0, channels=("vector",),
                                                      channel_weights=(1.0,)), embedder=embedder)
    try:
        with pytest.raises(StoreError, match="channels"):
            eng.use_model(model)
        assert eng.ranking_head is None
    finally:
        eng.close()


def test_train_engine_ranker_refuses_to_overwrite(shop) -> None:
    eng, model, _ = shop
    stamp = (model / RANKER_FILE).read_bytes()
    with pytest.raises(InvalidInputError, match="already exists"):
        train_engine_ranker(eng, model, progress=False)
    assert (model / RANKER_FILE).read_bytes() == stamp
