"""The context model inside the engine: ``train_engine`` trains it and the head that stacks it,
the behaviour index follows the catalog, training and serving compute the same features, and
a corrupt model folder is refused while the old model keeps serving. Toy sizes, no timing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_config import WordHashEmbedder

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.engine.context import CONTEXT_DIR, CONTEXT_FEATURES
from recsieve.engine.ranker import RankingHead
from recsieve.errors import CorruptStoreError
from recsieve.training import train_engine
from recsieve.training.context_model import TrainConfig
from recsieve.training.examples import engine_sequences, ranking_groups

GROUPS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")


def _items() -> list[Item]:
    return [Item(f"{g}-{j}", title=f"{g} gadget {g} model {j}") for g in GROUPS for j in range(8)]


def _events() -> list[Event]:
    """Users browse inside one group; a planted pattern that a one-step transition table cannot
    tell apart: after alpha-0 then alpha-1 comes alpha-2, after bravo-0 then alpha-1 comes bravo-2."""
    rng = np.random.default_rng(0)
    events, t = [], 0
    for u in range(120):
        g = GROUPS[u % len(GROUPS)]
        path = [f"{g}-{int(j)}" for j in rng.choice(np.arange(3, 8), size=5, replace=False)]
        if u % 2 == 0:  # first, so that it is not among the steps held out of the encoder's training
            path = (["alpha-0", "alpha-1", "alpha-2"] if u % 4 == 0 else ["bravo-0", "alpha-1", "bravo-2"]) + path
        for item in path:
            t += 1
            events.append(Event(f"u{u}", item, "click", ts=1_000_000.0 + 60.0 * t))
    return events


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx")
    config = EngineConfig(index="flat", recall_n=20, cache="none", refresh_threads=0, context_window=20)
    eng = Engine.create(root / "eng", config, embedder=WordHashEmbedder(32))
    eng.upsert_items(_items())
    eng.record(_events())
    # every user trains and the last epoch serves: with the default 24-user validation hold-out
    # (and its best epoch) this toy's encoder missed the planted pattern for seed 0, not for seed 1;
    # without it, it learnt the pattern for seeds 0, 1 and 2
    encoder = TrainConfig(epochs=150, batch_size=32, lr=3e-3, patience=None, seed=0, valid_users=0)
    report = train_engine(eng, root / "model", steps_per_user=1, users=None, encoder=encoder,
                          ablation_out=root / "ablation", refit_ablation_out=root / "before-refit",
                          scorer_epochs=3, scorer_budget_s=None, dim=16, max_len=20, progress=False)
    eng.close()
    return root, report


def _open(root, tmp_path):
    path = tmp_path / "eng"
    shutil.copytree(root / "eng", path)
    return Engine.open(path, embedder=WordHashEmbedder(32))


def _sequences_and_text(root, tmp_path):
    """The trained engine's training sequences and text vectors (read from a copy)."""
    eng = _open(root, tmp_path)
    try:
        return engine_sequences(eng), eng.text_vectors()
    finally:
        eng.close()


def test_train_engine_serves_one_folder_with_the_context_model(trained, tmp_path):
    root, report = trained
    assert (root / "model" / CONTEXT_DIR / "manifest.json").exists() and (root / "model" / "ranker.json").exists()
    assert report["scorer_examples"] > 0 and report["encoder_users"] > 100
    eng = _open(root, tmp_path)  # the switch was persisted: a reopened engine serves it
    try:
        assert eng.model_dir == root / "model"
        names = eng.feature_names()
        assert all(f"context.{f}" in names for f in CONTEXT_FEATURES)
        assert eng.ranking_head.features == names
        recs = eng.recommend("u1", 5)
        assert len(recs) == 5 and len({r.item_id for r in recs}) == 5
    finally:
        eng.close()


def test_the_ablation_head_reads_nothing_of_the_candidate_scorer(trained, tmp_path):
    root, report = trained
    ablation = report["ablation"]
    assert ablation["feature"] == "context.context_cross" and ablation["gain_of_feature"]["users"] > 0
    lo, hi = ablation["gain_of_feature"]["ci95"]
    assert lo <= ablation["gain_of_feature"]["mean"] <= hi
    full, ablated = RankingHead.load(root / "model"), RankingHead.load(root / "ablation")
    col = full.features.index("context.context_cross")
    assert np.abs(full.w1[col]).sum() > 0  # the full head reads the scorer's score ...
    assert np.all(ablated.w1[col] == 0) and ablated.features == full.features  # ... the ablation cannot
    eng = _open(root, tmp_path)
    try:  # and it serves like any model folder, with the same context model
        eng.use_model(root / "ablation")
        assert eng.serving_model.context is not None and len(eng.recommend("u2", 5)) == 5
    finally:
        eng.close()


def test_behaviour_indexes_are_closed_when_replaced_and_when_the_engine_closes(trained, tmp_path):
    """Each served model's behaviour index has background work (a compaction) to stop: a switch
    closes the replaced model's, Engine.close the serving one's (both stay searchable)."""
    root, _ = trained
    eng = _open(root, tmp_path)
    closed: list[int] = []

    def watch(index):
        close = index.close

        def closing():
            closed.append(id(index))
            close()

        index.close = closing
        return index

    first = watch(eng.serving_model.context.index)
    eng.use_model(root / "ablation")
    second = watch(eng.serving_model.context.index)
    assert second is not first and closed == [id(first)]
    assert len(first.search(np.ones((1, first.dim), np.float32), 3)[1][0]) == 3  # a late reader still searches it
    eng.close()
    assert closed == [id(first), id(second)]


def test_the_cooccurrence_feature_never_counted_a_held_out_step(trained, tmp_path):
    from recsieve.context.cooccurrence import CoOccurrence
    from recsieve.context.model import ContextModel
    from recsieve.training.model import SCORER_STEPS, encoder_sequences

    root, report = trained
    eng = _open(root, tmp_path)
    try:
        counts = ContextModel.load(root / "model" / CONTEXT_DIR).cooccurrence
        sequences = engine_sequences(eng)
        n = eng.catalog.num_rows
    finally:
        eng.close()
    assert counts is not None and report["cooccurrence_pairs"] == len(counts.data) > 0
    # every user gave examples (users=None): each one's last 1 + SCORER_STEPS steps are held out
    expected = CoOccurrence.fit(encoder_sequences(sequences, 1 + SCORER_STEPS), n)
    everything = CoOccurrence.fit(encoder_sequences(sequences, 0), n)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(counts, name), getattr(expected, name))
    assert len(everything.data) != len(counts.data) or not np.array_equal(everything.data, counts.data)


def test_a_model_trained_before_the_cooccurrence_feature_still_serves(trained, tmp_path):
    from recsieve.context.model import ContextModel

    root, _ = trained
    old = tmp_path / "old"
    context = ContextModel.load(root / "model" / CONTEXT_DIR)
    context.cooccurrence = None  # as saved before the feature
    context.save(old / CONTEXT_DIR)
    head = RankingHead.load(root / "model")
    keep = [i for i, f in enumerate(head.features) if f != "context.context_cooccurrence"]
    head.features = tuple(head.features[i] for i in keep)
    head.mean, head.std, head.w1 = head.mean[keep], head.std[keep], head.w1[keep]
    head.save(old)
    eng = _open(root, tmp_path)
    try:
        eng.use_model(old)
        serving = eng.ranking_head
        assert serving.features == eng.feature_names(context=True)
        col = serving.features.index("context.context_cooccurrence")
        assert not serving.w1[col].any()  # weight 0: the old head's scores
        assert len(eng.recommend("u1", 5)) == 5
    finally:
        eng.close()


def test_learn_keeps_the_context_model_beside_the_updated_head(trained, tmp_path):
    from recsieve.training import learn

    root, _ = trained
    eng = _open(root, tmp_path)
    try:
        # serve a head that cannot tell candidates apart (its output weights zeroed), so that learning
        # from the new steps beats it on their held-out share whatever the toy's trained head knows
        bad = tmp_path / "bad"
        shutil.copytree(root / "model" / CONTEXT_DIR, bad / CONTEXT_DIR)
        head = RankingHead.load(root / "model")
        head.w2 = np.zeros_like(head.w2)
        head.save(bad)
        eng.use_model(bad)
        rng = np.random.default_rng(1)
        t = 2e6
        for u in range(40):  # new steps, inside each user's group as before
            g = GROUPS[u % len(GROUPS)]
            for j in rng.choice(8, size=5, replace=False):
                t += 60.0
                eng.record(Event(f"u{u}", f"{g}-{int(j)}", "click", ts=t))
        report = learn(eng, epochs=3)
        assert report["new_examples"] > 0 and report["updated"], report
        assert report["valid_ndcg_after"] > report["valid_ndcg_before"]
        assert eng.model_dir == eng.directory / "models" / f"head-{report['to_seq']}"
        assert (eng.model_dir / CONTEXT_DIR / "manifest.json").exists()  # the head's context model came along
        assert eng.serving_model.context is not None and len(eng.recommend("u1", 5)) == 5
    finally:
        eng.close()


def _context_top(eng, history, n=3):
    view = eng.history_view([eng.catalog.row(i) for i in history], times=1e6 + 60.0 * np.arange(len(history)))
    recalled = eng.recall_stage(view, now=1e6 + 60.0 * len(history))
    lists = {ch.name: lst for ch, lst in zip(recalled.channels, recalled.lists)}
    return [eng.catalog.item_id(int(r)) for r in lists["context"].rows[:n]]


def test_the_behaviour_channel_reads_the_sequence_not_just_the_last_item(trained, tmp_path):
    root, _ = trained
    eng = _open(root, tmp_path)
    try:
        assert _context_top(eng, ["alpha-0", "alpha-1"], 1) == ["alpha-2"]
        assert _context_top(eng, ["bravo-0", "alpha-1"], 1) == ["bravo-2"]
    finally:
        eng.close()


def test_the_context_weight_is_chosen_on_held_out_steps_and_serving_fuses_with_it(trained, tmp_path):
    from recsieve.context import ContextModel
    from recsieve.training.fusion import WEIGHT_GRID

    root, report = trained
    fusion = report["fusion"]
    best = max(fusion["tried"], key=lambda r: (r["coverage"], r["mrr"], -r["weight"]))
    assert fusion["context_weight"] == best["weight"] and best["weight"] in WEIGHT_GRID
    assert ContextModel.load(root / "model" / CONTEXT_DIR).settings.extra["recall_weight"] == best["weight"]
    eng = _open(root, tmp_path)
    try:
        runtime = eng.serving_model.context
        assert runtime.fusion_weight(-1.0) == best["weight"]  # the model's, not the config's
        history = ["bravo-0", "alpha-1"]
        view = eng.history_view([eng.catalog.row(i) for i in history], times=1e6 + 60.0 * np.arange(2))

        def fused_top(weight):
            runtime.model.settings.extra["recall_weight"] = weight
            rec = eng.recall_stage(view, now=1e6 + 120.0)
            lists = {ch.name: lst for ch, lst in zip(rec.channels, rec.lists)}
            return rec.cands.rows[:3].tolist(), lists["context"].rows[:3].tolist()

        fused, context = fused_top(1e6)  # overwhelming weight: recall's order is the channel's
        assert fused == context
        fused, context = fused_top(0.0)  # no weight: the channel's top item is not first by its grace
        assert fused != context
    finally:
        eng.close()


def test_a_cold_item_is_recallable_at_once_from_text(trained, tmp_path):
    root, _ = trained
    eng = _open(root, tmp_path)
    try:
        behaviour = eng.serving_model.context.index
        before = len(behaviour)
        eng.upsert_items([Item("echo-new", title="echo gadget echo model new")])
        assert len(behaviour) == before + 1  # in the behaviour index at once
        history = [f"echo-{j}" for j in range(5)]
        top = _context_top(eng, history, 20)
        assert "echo-new" in top
        others = [i for i in top if not i.startswith("echo")]
        assert not others or top.index("echo-new") < top.index(others[0])  # above every text-distant item
        eng.remove_items(["echo-new"])
        assert "echo-new" not in _context_top(eng, history, 40)
    finally:
        eng.close()


def test_training_and_serving_compute_identical_features(trained, tmp_path):
    root, _ = trained
    eng = _open(root, tmp_path)
    try:
        sequences = engine_sequences(eng)
        users = {u: sequences[u] for u in ("u3", "u8")}
        stats, _ = eng.statistics()
        groups, _ = ranking_groups(eng, users, steps_per_user=1, channels=stats, model=eng.load_model(eng.model_dir))
        assert groups
        for g in groups:
            seq = sequences[g.user_id]
            history = seq[:-1]
            view = eng.history_view([s.item for s in history], [s.kind for s in history], [s.ts for s in history])
            # serving, with the same statistics (the training copy left this user out of them)
            recalled = eng.recall_stage(view, now=seq[-1].ts, statistics=_without(eng, sequences, g.user_id))
            np.testing.assert_array_equal(recalled.cands.rows, g.rows)
            np.testing.assert_allclose(eng.features(view, recalled), g.features, rtol=1e-5, atol=1e-6)
    finally:
        eng.close()


def _without(eng, sequences, user):
    from recsieve.training.examples import observe_steps

    stats, _ = eng.statistics()
    observe_steps(eng, stats, sequences[user], forget=True)
    return stats


def test_a_corrupt_model_folder_is_refused_and_the_old_model_keeps_serving(trained, tmp_path):
    root, _ = trained
    eng = _open(root, tmp_path)
    try:
        before = [r.item_id for r in eng.recommend("u5", 5)]
        bad = tmp_path / "bad"
        shutil.copytree(root / "model", bad)
        weights = bad / CONTEXT_DIR / "encoder.pt"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        with pytest.raises(CorruptStoreError, match="checksum"):
            eng.use_model(bad, persist=True)
        half = tmp_path / "half"
        shutil.copytree(root / "model", half)
        (half / CONTEXT_DIR / "manifest.json").unlink()
        with pytest.raises(CorruptStoreError, match="manifest"):
            eng.use_model(half)
        assert eng.model_dir == root / "model"
        assert [r.item_id for r in eng.recommend("u5", 5)] == before
        assert "bad" not in (eng.directory / "recsieve.toml").read_text()
    finally:
        eng.close()


def test_the_encoder_is_refit_after_the_head_and_its_ablation_keeps_the_first_one(trained, tmp_path):
    """After the head, the encoder trains on every user's whole sequence (held-out steps
    included): the folder and the scorer's ablation serve the refit encoder; the refit's ablation
    folder the same head with the encoder the head was trained with."""
    from recsieve.context.model import ContextModel

    root, report = trained
    refit = report["refit"]
    assert refit["epochs"] == 5 and refit["train_users"] == 120  # every user, whole
    assert report["encoder"]["train_users"] == 120 and report["encoder_users"] == 120
    models = {name: ContextModel.load(root / name / CONTEXT_DIR) for name in ("model", "ablation", "before-refit")}
    contexts = [np.array([0, 1]), np.array([8, 1, 20])]
    scores = {name: m.score_items(contexts) for name, m in models.items()}
    np.testing.assert_array_equal(scores["ablation"], scores["model"])
    assert not np.allclose(scores["before-refit"], scores["model"], atol=1e-4)
    heads = [RankingHead.load(root / name) for name in ("model", "before-refit")]
    assert heads[0].features == heads[1].features and np.array_equal(heads[0].w1, heads[1].w1)
    eng = _open(root, tmp_path)
    try:  # it serves like any model folder
        eng.use_model(root / "before-refit")
        assert eng.serving_model.context is not None and len(eng.recommend("u2", 5)) == 5
    finally:
        eng.close()


@pytest.mark.parametrize("settings", [{"refit_epochs": -1}, {"refit_epochs": 1.5}, {"refit_lr": 0.0},
                                      {"refit_epochs": 0, "refit_ablation_out": "before"}])
def test_bad_refit_settings_are_refused_before_anything_trains(trained, tmp_path, settings):
    from recsieve.errors import InvalidInputError

    eng = _open(trained[0], tmp_path)
    try:
        with pytest.raises(InvalidInputError, match=list(settings)[-1]):
            train_engine(eng, tmp_path / "m", **settings, progress=False)
        assert not (tmp_path / "m").exists() and eng.model_dir == trained[0] / "model"
    finally:
        eng.close()


def test_the_refit_validates_on_the_first_trainings_held_out_users(trained, tmp_path, monkeypatch):
    """:func:`refit_encoder` validates on the users the first training held out, each on its
    newest step (which the first training never saw), and trains every other step."""
    import recsieve.training.model as train_model
    from recsieve.context.model import ContextModel
    from recsieve.training.validation import validation_rows

    root, _ = trained
    sequences, text = _sequences_and_text(root, tmp_path)
    first = train_model._encoder_rows(sequences, 3, among={f"u{u}" for u in range(0, 120, 3)})
    config = TrainConfig(epochs=1, batch_size=32, valid_users=10, seed=4, bf16=False)
    held_out = {list(first)[i] for i in validation_rows(list(first.values()), config)}
    seen = {}
    real = train_model.fit_context_model

    def spy(sequences, *args, valid, **kw):
        seen["rows"], seen["valid"] = sequences, valid
        return real(sequences, *args, valid=valid, **kw)

    monkeypatch.setattr(train_model, "fit_context_model", spy)
    model = ContextModel.load(root / "model" / CONTEXT_DIR)
    hist = train_model.refit_encoder(model, sequences, first, config, text, epochs=1, lr=1e-4)
    whole = train_model._encoder_rows(sequences, 0)
    assert len(seen["rows"]) == len(whole) == 120 and len(held_out) == 10 == hist["valid_users"]
    assert {list(whole)[i] for i in seen["valid"]} == held_out
    for u in held_out:  # the first training saw first[u][:-1], a prefix: the newest step is past it
        assert np.array_equal(whole[u][: len(first[u])], first[u])
    assert "valid_ndcg@10_before" in hist


def test_the_refit_stops_at_its_share_of_the_encoders_budget(trained, tmp_path, monkeypatch):
    """A large catalog's refit epoch can take minutes: the refit is bounded by a share of the
    encoder's budget and stops mid-epoch there; without a budget it runs its epochs."""
    import recsieve.training.model as train_model
    from recsieve.context.model import ContextModel

    root, _ = trained
    sequences, text = _sequences_and_text(root, tmp_path)
    first = train_model._encoder_rows(sequences, 3)
    config = TrainConfig(epochs=1, batch_size=8, valid_users=10, seed=4, bf16=False)
    model = ContextModel.load(root / "model" / CONTEXT_DIR)
    cut = train_model.refit_encoder(model, sequences, first, config, text, epochs=3, lr=1e-4, budget_s=1e-9)
    assert 0 < cut["epochs"] < 1 and len(cut["epoch_seconds"]) == 1  # one batch of one epoch, validated
    assert "valid_ndcg@10" in cut and len(cut["valid_ndcg@10"]) == 1
    whole = train_model.refit_encoder(model, sequences, first, config, text, epochs=2, lr=1e-4)
    assert whole["epochs"] >= 1
    budgets = []
    real = train_model.refit_encoder
    monkeypatch.setattr(train_model, "refit_encoder",
                        lambda *a, budget_s=None, **kw: budgets.append(budget_s) or real(*a, budget_s=budget_s, **kw))
    eng = _open(root, tmp_path / "again")
    try:
        train_engine(eng, tmp_path / "m", users=None, steps_per_user=1, budget_s=40.0, epochs=2, scorer_epochs=1,
                     scorer_budget_s=None, dim=16, max_len=20, refit_epochs=1, progress=False)
    finally:
        eng.close()
    assert budgets == [40.0 * train_model.REFIT_BUDGET_SHARE]


def test_scorer_steps_never_take_the_heads_steps():
    """A user with fewer positive steps than the scorer's and the head's together gives the
    scorer only steps before the head's last ``skip_last`` ones (none may be shared)."""
    from recsieve.rerankers.training import Step
    from recsieve.training.examples import last_positives
    from recsieve.training.model import held_out_steps

    def seq(n):
        return [Step(i, "click", float(i), None) for i in range(n)]

    sequences = {"long": seq(10), "short": seq(4), "tiny": seq(2)}
    contexts, targets = held_out_steps(sequences, skip_last=3, take=2)
    head = {(u, sequences[u][t].item) for u in sequences for t in last_positives(sequences[u], 3)}
    scorer = set(zip(["long", "long"], targets[:2]))
    assert targets[:2] == [5, 6]  # long: the two steps before its last three
    assert not scorer & head
    assert targets[2:] == []  # short (3 steps with history) and tiny give the head everything
    assert [len(c) for c in contexts] == [5, 6]


def test_only_the_example_users_last_steps_are_held_out_of_the_encoder():
    """``train_engine`` holds the scorer's and the head's steps out of the encoder's training for
    the users whose steps become examples, and only for them: every other user trains it whole."""
    from recsieve.rerankers.training import Step
    from recsieve.training.model import encoder_sequences, held_out_steps

    def seq(n):
        return [Step(i, "click", float(i), None) for i in range(n)]

    sequences = {"a": seq(10), "b": seq(10), "c": seq(3)}
    rows = encoder_sequences(sequences, 5, among={"a", "c"})
    assert [r.tolist() for r in rows] == [list(range(5)), list(range(10))]  # c keeps one step: too few
    assert [r.tolist() for r in encoder_sequences(sequences, 5)] == [list(range(5)), list(range(5))]
    _, targets = held_out_steps(sequences, 3, 2, among={"a"})
    assert targets == [5, 6]


def test_ranking_examples_and_fusion_tuning_draw_only_from_the_example_users(trained, tmp_path):
    from recsieve.training.examples import engine_sequences, ranking_groups, sample_users

    eng = _open(trained[0], tmp_path)
    try:
        sequences = engine_sequences(eng)
        among = set(sample_users(sequences, 30, seed=3))
        groups, tried = ranking_groups(eng, sequences, users=12, steps_per_user=1, seed=0, among=among)
        assert tried == 12 and groups and {g.user_id for g in groups} <= among
        everyone, _ = ranking_groups(eng, sequences, users=12, steps_per_user=1, seed=0)
        assert not {g.user_id for g in everyone} <= among  # the restriction is what keeps them inside
    finally:
        eng.close()
