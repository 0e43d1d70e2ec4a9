"""The batched ranking examples (recsieve.training.batched_examples) are the per-user loop's:
the same groups (users, targets, candidate rows in order, contexts) and the same features to
float rounding, on small engines with and without a context model; and each vectorised piece
matches the serving function it stands for on random inputs. Toy sizes, no timing."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch
from test_config import WordHashEmbedder

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.engine.ranker import candidate_features
from recsieve.engine.recall import (
    PopularityChannel,
    RecallRequest,
    TransitionsChannel,
    VectorChannel,
    fuse,
)
from recsieve.rerankers.training import Step
from recsieve.training.batched_examples import batched_groups, supported
from recsieve.training.batched_features import list_features
from recsieve.training.batched_recall import (
    KeySet,
    Lists,
    OwnSteps,
    PopularityTable,
    TransitionTable,
    fuse_many,
)
from recsieve.training.batched_search import search_many
from recsieve.training.examples import (
    engine_sequences,
    groups_for,
    last_positives,
    observe_all,
    observe_steps,
    ranking_groups,
)
from recsieve.types import Candidates

KINDS = ("click", "click", "click", "view", "purchase", "cart", "skip", "dislike")


class RandomEmbedder:
    """Text -> a seeded Gaussian unit vector: continuous scores, so ties are rare."""

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim

    def embed(self, texts, *, show_progress=None):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:12], 16)).normal(size=self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _build(path, embedder, *, index="flat", exclude_consumed=True, users=70, seed=0) -> Engine:
    config = EngineConfig(index=index, recall_n=15, recent_window=5, short_term_events=3, context_window=12,
                          cache="none", refresh_threads=0, exclude_consumed=exclude_consumed)
    eng = Engine.create(path, config, embedder=embedder)
    eng.upsert_items([Item(f"g{g}-{j}", title=f"group {g} gadget {j} {'red' if j % 2 else 'blue'}",
                           categories=[f"g{g}"]) for g in range(6) for j in range(10)], show_progress=False)
    rng = np.random.default_rng(seed)
    events, t = [], 0
    for u in range(users):
        g = u % 6
        n = 1 if u % 11 == 0 else int(rng.integers(2, 15))  # some users have a single step
        for _ in range(n):
            t += 1
            j = int(rng.integers(10)) if rng.random() < 0.8 else None
            item = f"g{g}-{j}" if j is not None else f"g{int(rng.integers(6))}-{int(rng.integers(10))}"
            events.append(Event(f"u{u:02d}", item, KINDS[int(rng.integers(len(KINDS)))], ts=1_000_000.0 + 90.0 * t))
    eng.record(events)
    eng.remove_items(["g0-3", "g1-5", "g4-0"])  # in histories and among targets, never recalled
    return eng


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    eng = _build(tmp_path_factory.mktemp("batched") / "eng", RandomEmbedder())
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def ties(tmp_path_factory):
    """Word-hash vectors (many equal scores) in an HNSW index, consumed items not excluded."""
    eng = _build(tmp_path_factory.mktemp("ties") / "eng", WordHashEmbedder(), index="hnsw", exclude_consumed=False)
    yield eng
    eng.close()


def _same(got, want, *, some: bool = True) -> None:
    assert len(got) == len(want) and (want or not some)
    for a, b in zip(got, want):
        assert (a.user_id, a.target, a.context) == (b.user_id, b.target, b.context)
        np.testing.assert_array_equal(a.rows, b.rows)
        assert a.features.shape == b.features.shape
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)


def _both(eng, sequences, **kw):
    new, tried = ranking_groups(eng, sequences, **kw)
    old, tried_old = ranking_groups(eng, sequences, batch=False, **kw)
    assert tried == tried_old
    return new, old


def test_batched_groups_are_the_per_user_loops(shop) -> None:
    sequences = engine_sequences(shop)
    new, old = _both(shop, sequences, steps_per_user=3, seed=0)
    _same(new, old)
    assert len({g.user_id for g in new}) > 20 and any(g.features[:, 2].any() for g in new)  # transitions found some
    removed = {r for r in range(shop.catalog.num_rows) if not shop.catalog.is_live(r)}
    assert len(removed) == 3 and not any(set(g.rows.tolist()) & removed for g in new)
    assert any(s.item in removed for seq in sequences.values() for s in seq)
    _same(*_both(shop, sequences, users=9, steps_per_user=2, seed=4))  # a seeded sample of users


def test_instructions_new_from_and_given_statistics(shop) -> None:
    sequences = engine_sequences(shop)

    def asker():
        rng = np.random.default_rng(7)  # drawn per call: the order of calls must be the loop's
        return lambda row: None if rng.random() < 0.5 else f"something like {shop.catalog.title(row)}"

    new_from = {u: max(1, len(s) - 2) for i, (u, s) in enumerate(sorted(sequences.items())) if i % 2}
    kw = dict(steps_per_user=2, seed=1, new_from=new_from)
    new, _ = ranking_groups(shop, sequences, instruction_for=asker(), channels=shop.statistics()[0], **kw)
    old, _ = ranking_groups(shop, sequences, instruction_for=asker(), channels=shop.statistics()[0], batch=False, **kw)
    _same(new, old)
    assert {g.user_id for g in new} <= set(new_from)
    assert any("something like" in g.context for g in new) and any("something like" not in g.context for g in new)


def test_missing_and_out_of_order_times(shop) -> None:
    sequences = engine_sequences(shop)
    for i, u in enumerate(sorted(sequences)):
        steps = sequences[u]
        if i % 3 == 0:  # no times: a step's time is its position
            sequences[u] = [Step(s.item, s.kind, None, s.text) for s in steps]
        elif i % 3 == 1 and len(steps) > 3:  # an older event after a newer one is decayed itself
            ts = [s.ts for s in steps]
            ts[1], ts[2] = ts[2], ts[1]
            sequences[u] = [Step(s.item, s.kind, t, s.text) for s, t in zip(steps, ts)]
    new, old = _both(shop, sequences, steps_per_user=3, seed=0)
    _same(new, old)
    assert len(new) >= 10
    # the changed times reached the examples: against the log's own times some features differ
    plain, _ = ranking_groups(shop, engine_sequences(shop), steps_per_user=3, seed=0)
    by_key = {(g.user_id, g.target, tuple(g.rows)): g.features for g in plain}
    moved = [not np.allclose(g.features, by_key[k]) for g in new
             if (k := (g.user_id, g.target, tuple(g.rows))) in by_key]
    assert moved and any(moved)


@pytest.mark.parametrize("threads", [1, 3])
def test_chunks_ties_hnsw_and_consumed_items_kept(ties, monkeypatch, threads) -> None:
    import recsieve.training.batched_recall as batched

    monkeypatch.setattr(batched, "DENSE_LIMIT", 0)  # transition scores summed by sorting, not in a matrix
    sequences = engine_sequences(ties)
    channels = ties.new_statistics()
    observe_all(ties, channels, sequences)
    targets = {u: last_positives(s, 2) for u, s in sequences.items() if last_positives(s, 2)}
    got = batched_groups(ties, sequences, targets, channels, chunk=4, threads=threads)  # chunks on threads or not
    want = []
    for u in sorted(targets):
        observe_steps(ties, channels, sequences[u], forget=True)
        want += groups_for(ties, sequences, {u: targets[u]}, channels)
        observe_steps(ties, channels, sequences[u])
    got = [_Group(*g) for g in got]
    _same(got, want)
    assert len(targets) > 4  # more than one chunk of 4 users
    # consumed items are not excluded on this engine: some candidate list holds an item the user had before
    consumed = [set(s.item for s in sequences[g.user_id]) & set(g.rows.tolist()) for g in got]
    assert any(consumed)
    # word-hash vectors tie: within some candidate list two items score equally against one of them,
    # so the order among ties is part of what was compared
    vec = ties.text_vectors()
    assert any(len(np.unique(np.round(vec[g.rows] @ vec[g.rows[0]], 6))) < len(g.rows) for g in got)


class _Group:
    def __init__(self, user_id, features, target, rows, render) -> None:
        self.user_id, self.features, self.target, self.rows = user_id, features, target, rows
        self.context = render()  # the batched builder renders a context when it is read


def test_statistics_are_left_as_given(shop) -> None:
    channels, _ = shop.statistics()
    before = [ch.state() for ch in channels]
    ranking_groups(shop, engine_sequences(shop), steps_per_user=2, channels=channels)
    for ch, st in zip(channels, before):
        if st is not None:
            after = ch.state()
            assert all(np.array_equal(st[k], after[k]) for k in st)


def test_each_user_is_taken_out_of_the_statistics_as_given(shop) -> None:
    """Statistics that lack a user's steps: that user's forget stops at zero, and nothing of theirs
    reaches the users after them (the loop re-observed what it had forgotten)."""
    sequences = engine_sequences(shop)
    users = sorted(u for u in sequences if last_positives(sequences[u], 2))
    missing, later = users[0], users[1:6]
    given = shop.new_statistics()
    for u in sorted(sequences):
        if u != missing:
            observe_steps(shop, given, sequences[u])
    targets = {u: last_positives(sequences[u], 2) for u in [missing, *later]}
    got = [_Group(*g) for g in batched_groups(shop, sequences, targets, given)]
    assert got
    for u in [missing, *later]:
        alone = [ch.copy() for ch in given]
        observe_steps(shop, alone, sequences[u], forget=True)
        _same([g for g in got if g.user_id == u], groups_for(shop, sequences, {u: targets[u]}, alone), some=False)


def test_observe_all_counts_what_observe_steps_counts(shop) -> None:
    sequences = engine_sequences(shop)
    one, many = shop.new_statistics(), shop.new_statistics()
    for u in sorted(sequences):
        observe_steps(shop, one, sequences[u])
    observe_all(shop, many, sequences)
    for a, b in zip(one, many):
        sa, sb = a.state(), b.state()
        assert (sa is None) == (sb is None)
        if sa is not None:
            for k in sa:  # the same counts (an array's spare room past the last row aside)
                x, y = sa[k], sb[k]
                size = max(x.size, y.size)
                assert np.array_equal(np.pad(x, (0, size - x.size)), np.pad(y, (0, size - y.size))), k


def test_other_channels_fall_back_to_the_loop(shop) -> None:
    class Echo(VectorChannel):
        pass

    channels = shop.new_statistics()
    assert supported(channels)
    assert not supported([Echo(shop.index)] + channels[1:])


# -- a context model ---------------------------------------------------------------------------


def _context_model(eng, folder, *, reads=("kinds", "ages"), instruction=True):
    import torch

    from recsieve.context.cooccurrence import CoOccurrence
    from recsieve.context.model import ContextModel, ContextSettings

    torch.manual_seed(0)
    settings = ContextSettings(n_warm=eng.catalog.num_rows, text_dim=eng.dim, dim=16, max_len=8, dropout=0.0,
                               kinds=("click", "view", "purchase"), instruction_dim=eng.dim if instruction else 0,
                               extra={"reads": list(reads), "recall_weight": 2.0})
    model = ContextModel(settings)
    model.set_items(eng.text_vectors())
    model.scorer = model.new_scorer()
    model.cooccurrence = CoOccurrence.fit([np.array([s.item for s in q], np.int64)
                                           for q in engine_sequences(eng).values()], eng.catalog.num_rows)
    model.eval()
    model.save(folder / "context")
    return eng.load_model(folder)


@pytest.mark.parametrize("reads,instruction", [(("kinds", "ages"), True), ((), False)])
def test_with_a_context_model(shop, tmp_path, reads, instruction, monkeypatch) -> None:
    model = _context_model(shop, tmp_path / "model", reads=reads, instruction=instruction)
    sequences = engine_sequences(shop)

    def asker():
        rng = np.random.default_rng(3)
        return lambda row: None if rng.random() < 0.6 else f"a {shop.catalog.title(row)} please"

    # torch's thread count is the process's: the pool's threads must not set it (they would race)
    main, set_on_pool, real_set = threading.get_ident(), [], torch.set_num_threads

    def set_num_threads(n: int) -> None:
        if threading.get_ident() != main:
            set_on_pool.append(n)
        real_set(n)

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    before = torch.get_num_threads()
    new, _ = ranking_groups(shop, sequences, steps_per_user=3, model=model, instruction_for=asker(), threads=3)
    assert not set_on_pool and torch.get_num_threads() == before
    old, _ = ranking_groups(shop, sequences, steps_per_user=3, model=model, instruction_for=asker(), batch=False)
    _same(new, old)
    assert new[0].features.shape[1] == len(shop.feature_names(context=True))
    names = shop.feature_names(context=True)
    for column in ("context.context_cross", "context.context_cooccurrence"):  # the scorer's, co-occurrence
        assert any(g.features[:, names.index(column)].any() for g in new), column


def test_with_a_trained_context_model(tmp_path) -> None:
    from recsieve.training import train_engine
    from recsieve.training.context_model import TrainConfig

    eng = _build(tmp_path / "eng", RandomEmbedder(), users=60, seed=2)
    try:
        train_engine(eng, tmp_path / "model", steps_per_user=1, users=None, scorer_epochs=1, scorer_budget_s=None,
                     encoder=TrainConfig(epochs=2, batch_size=16, patience=None, seed=0), dim=16, max_len=8,
                     progress=False)
        model = eng.load_model(tmp_path / "model")
        assert model.context is not None and model.context.model.scorer is not None
        _same(*_both(eng, engine_sequences(eng), steps_per_user=2, model=model))
    finally:
        eng.close()


@pytest.mark.parametrize("own_config", [False, True])
@pytest.mark.parametrize("exclude", [True, False])
def test_the_encoder_leaves_seen_items_out_of_its_softmax_as_serving_does(tmp_path, exclude, own_config) -> None:
    from recsieve.training import train_engine
    from recsieve.training.context_model import TrainConfig

    encoder = TrainConfig(epochs=1) if own_config else None  # its exclude_seen is on by default
    eng = _build(tmp_path / "eng", RandomEmbedder(), exclude_consumed=exclude, users=40, seed=2)
    try:
        report = train_engine(eng, tmp_path / "model", steps_per_user=1, users=None, cross_encoder=False,
                              epochs=1, budget_s=None, refit_epochs=0, encoder=encoder, dim=16, max_len=8,
                              progress=False)
    finally:
        eng.close()
    assert report["encoder"]["exclude_seen"] is exclude  # the engine's exclude_consumed decides


# -- each piece against the serving function it stands for --------------------------------------


def _random_lists(rng, n_groups, n_rows, sizes):
    out = []
    for _ in range(n_groups):
        per = []
        for m in sizes:
            rows = rng.choice(n_rows, size=int(rng.integers(0, m + 1)), replace=False).astype(np.int64)
            per.append(Candidates(rows, np.sort(rng.normal(size=rows.size)).astype(np.float32)[::-1].copy()))
        out.append(per)
    return out


@pytest.mark.parametrize("weights", [[1.0, 0.7, 0.3, 2.0], [1.0, 1.0, 1.0, 1.0]])
def test_fusion_and_list_features_are_servings(weights) -> None:
    rng = np.random.default_rng(0)
    n_rows, n = 40, 12
    groups = _random_lists(rng, 30, n_rows, (15, 10, 20, 0))
    lists = [Lists.concat([(g[c].rows, g[c].scores) for g in groups]) for c in range(4)]
    fused = fuse_many(lists, weights, n, n_rows + 1)
    # equal weights: rows at the same ranks of different lists tie, some of them at a request's n-th place
    ties = [fuse(per, weights, n + 10).scores for per in groups]
    assert len(set(weights)) > 1 or any(len(t) > n and t[n - 1] == t[n] for t in ties)
    feats = list_features(fused, lists, n_rows + 1)
    vectors = np.eye(n_rows, 4, dtype=np.float32)
    for i, per in enumerate(groups):
        want = fuse(per, weights, n)
        rows, scores = fused.get(i)
        np.testing.assert_array_equal(rows, want.rows)
        np.testing.assert_array_equal(scores, want.scores)
        full = candidate_features(want, per, vectors, profile=None, recent_rows=[], instruction=None,
                                  popularity=np.zeros(len(want), np.float32))
        a, b = fused.offsets[i], fused.offsets[i + 1]
        np.testing.assert_array_equal(feats[a:b], full[:, : 2 * len(per)])


def _stream(rng, users, n_rows):
    """Random per-user steps (rows, positive flags), a few rows repeated."""
    return {u: (rng.integers(0, n_rows, size=int(rng.integers(1, 12))), rng.random(12) < 0.8) for u in range(users)}


@pytest.mark.parametrize("dense", [True, False])
def test_leave_out_tables_are_the_channels_after_forget(monkeypatch, dense) -> None:
    import recsieve.training.batched_recall as batched

    monkeypatch.setattr(batched, "DENSE_LIMIT", 1 << 23 if dense else 0)  # summed in a matrix, or sorted
    rng = np.random.default_rng(1)
    n_rows, n = 25, 8
    stream = _stream(rng, 12, n_rows)
    trans, pop = TransitionsChannel(depth=4, decay=0.7), PopularityChannel(lambda: n_rows)

    def feed(channel, u, forget=False):
        rows, pos = stream[u]
        prev = None
        for r, p in zip(rows.tolist(), pos[: rows.size].tolist()):
            (channel.forget if forget else channel.observe)(prev, r, p)
            if p:
                prev = r

    for u in stream:
        feed(trans, u)
        feed(pop, u)
    base = n_rows + 1
    accept = np.ones(n_rows, bool)
    accept[3] = False
    table, ptable = TransitionTable(trans), PopularityTable(pop, base, accept)
    table.set_base(base)
    users = sorted(stream)
    own = OwnSteps([stream[u][0][stream[u][1][: stream[u][0].size]] for u in users], base)
    recent = [stream[u][0][stream[u][1][: stream[u][0].size]][-5:].tolist() for u in users]
    excluded = [np.unique(stream[u][0][:3]) for u in users]
    exclude = KeySet(np.concatenate([g * base + e for g, e in enumerate(excluded)]), len(users) * base)
    got = table.recall(recent, np.arange(len(users)), own, n, accept, exclude, table.taken_out(own))
    owned = [np.unique(r) for r in (stream[u][0][stream[u][1][: stream[u][0].size]] for u in users)]
    got_pop = ptable.recall(owned, np.arange(len(users)), own, n, exclude,
                            np.array([e.size for e in excluded]), np.array([g % 2 == 0 for g in users]), base)
    totals = ptable.totals(own, len(users))
    for g, u in enumerate(users):
        feed(trans, u, forget=True)
        feed(pop, u, forget=True)
        req = RecallRequest(n=n, recent_rows=tuple(recent[g]), exclude=frozenset(excluded[g].tolist()),
                            accept=lambda r: bool(accept[r]), query=np.ones(2) if g % 2 == 0 else None)
        for mine, channel in ((got, trans), (got_pop, pop)):
            want = channel.recall(req if channel is trans else RecallRequest(
                n=n, exclude=req.exclude, accept=req.accept, query=req.query))
            np.testing.assert_array_equal(mine.get(g)[0], want.rows)
            np.testing.assert_array_equal(mine.get(g)[1], want.scores)
        cands = np.arange(n_rows, dtype=np.int64)
        last = np.full(n_rows, recent[g][-1] if recent[g] else -1, np.int64)
        np.testing.assert_array_equal(table.last_share(last, np.full(n_rows, g), cands, own, table.taken_out(own)),
                                      trans.features(req, cands)[:, 0])
        np.testing.assert_array_equal(ptable.share(np.full(n_rows, g), cands, own, totals),
                                      np.array([pop.share(int(r)) for r in cands], np.float32))
        feed(trans, u)
        feed(pop, u)


@pytest.mark.parametrize("kind,deeper", [("flat", 128), ("flat", 2), ("hnsw", 128)])
def test_many_searches_are_single_searches(kind, deeper, monkeypatch) -> None:
    import recsieve.training.batched_search as batched
    from recsieve.indexes.faiss_index import FaissIndex

    monkeypatch.setattr(batched, "DEEPER", deeper)  # 2: most queries come out short and go deeper

    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors[10] = vectors[11]  # a tie
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(8, kind)
    index.upsert(np.arange(300), vectors, [{} for _ in range(300)])
    index.remove(np.array([5, 6]))
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    queries[0] = vectors[10]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    excludes = [np.sort(rng.choice(300, size=int(rng.integers(0, 30)), replace=False)) for _ in range(40)]
    accept = np.ones(300, bool)
    accept[[7, 8]] = False
    got = search_many(index, queries, 20, excludes, accept)
    for q, e, (rows, scores) in zip(queries, excludes, got):
        s, ids = index.search(q[None], 20, exclude=e)
        keep = (ids[0] >= 0) & accept[np.maximum(ids[0], 0)]
        np.testing.assert_array_equal(rows, ids[0][keep])
        np.testing.assert_array_equal(scores, s[0][keep])


def test_fusion_weight_tuning_reads_the_same_lists(shop, tmp_path) -> None:
    from recsieve.training.fusion import tune_context_weight

    model = _context_model(shop, tmp_path / "model")
    sequences = engine_sequences(shop)
    batched = tune_context_weight(shop, sequences, model, steps_per_user=2, users=30, seed=1)
    loop = tune_context_weight(shop, sequences, model, steps_per_user=2, users=30, seed=1, batch=False)
    assert batched == loop and batched[1][0]["coverage"] > 0
