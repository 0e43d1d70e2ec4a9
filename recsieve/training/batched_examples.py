"""The ranking head's examples built in chunks of users: the same groups as the per-user loop
(:func:`~recsieve.training.examples.groups_for` with each user's steps taken out of the recall
statistics), several times faster (``bench/ranking_examples_speed.py``; the figures are in the
README).

The per-user loop forgets a user's steps event by event, rebuilds a user view event by event,
then runs each channel, fusion and the features in Python per candidate. Here, for a chunk of
users:

- **leave-user-out without the loop**: the statistics are read once as arrays
  (:meth:`~recsieve.engine.recall.RecallChannel.state`), and a user's own transition pairs and
  positive rows (:class:`~recsieve.training.batched_recall.OwnSteps`) are subtracted where a
  candidate list or a feature reads them (the statistics themselves are never changed);
- **views**: every request's decayed profile comes from one recurrence over the chunk's users,
  in the user store's own float arithmetic, so the query vector is bit for bit serving's;
- **one search for many queries** on an exact FAISS index, for the vector channel and the
  behaviour index; the context encoder runs once per chunk and context length (a batch of equal
  lengths computes what a single request computes, bit for bit);
- fusion and the per-channel features over all candidates of the chunk at once
  (:mod:`recsieve.training.batched_features`), only the entries at least as good as a request's
  ``n``-th sorted; the candidate scorer in batches; the other features and the rendered context
  are serving's own functions, per request (the context rendered when it is first read);
- **chunks on threads** (:func:`batched_groups`): most of a chunk's time is numpy and FAISS,
  which release the GIL.

Channels other than the built-in vector, transitions and popularity ones are not supported here
(:func:`supported` says so, and :func:`~recsieve.training.examples.ranking_groups` then runs the
per-user loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from operator import attrgetter

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from recsieve.context.model import torch_threads
from recsieve.engine.context import ContextRuntime
from recsieve.engine.engine import Engine
from recsieve.engine.models import ServingModel
from recsieve.engine.pipeline import query_vector
from recsieve.engine.ranker import candidate_features
from recsieve.engine.recall import (
    PopularityChannel,
    RecallChannel,
    TransitionsChannel,
    VectorChannel,
)
from recsieve.engine.users import RecentEvent, UserView
from recsieve.quantization import usable_cpus
from recsieve.rerankers.training import Step
from recsieve.training.batched_context import Context, cross_scores, user_vectors
from recsieve.training.batched_features import list_features
from recsieve.training.batched_recall import (
    KeySet,
    Lists,
    OwnSteps,
    PopularityTable,
    TransitionTable,
    fuse_many,
    unique_sorted,
)
from recsieve.training.batched_search import search_many
from recsieve.types import EVENT_KINDS

__all__ = ["CHUNK_USERS", "supported", "Requests", "Recall", "prepare", "recall_chunks", "batched_groups",
           "default_threads"]

#: Users per chunk: enough for numpy to pay off, small enough for a chunk's arrays to stay small.
CHUNK_USERS = 256
_DAY = 86400.0


def supported(channels: Sequence[RecallChannel]) -> bool:
    """Whether the batched builder reproduces these channels (the built-in ones, exactly)."""
    return all(type(ch) in (VectorChannel, TransitionsChannel, PopularityChannel) for ch in channels)


@dataclass
class _User:
    """One user's steps as arrays: rows, kinds, times (a missing time: the step's position), the
    profile weight of each (as a user view weighs it) and whether the statistics counted it."""

    rows: np.ndarray
    kinds: list[str]
    ts: np.ndarray
    weight: np.ndarray
    observed: np.ndarray

    @classmethod
    def of(cls, steps: Sequence[Step], observed: dict[str, bool]) -> _User:
        """``observed[kind]``: whether the statistics count a step of that kind (iterated in C: a
        sampled user's whole history is read)."""
        n = len(steps)
        kinds = list(map(attrgetter("kind"), steps))
        ts = list(map(attrgetter("ts"), steps))
        if None in ts:
            ts = [t if t is not None else float(i) for i, t in enumerate(ts)]
        return cls(np.fromiter(map(attrgetter("item"), steps), np.int64, count=n), kinds, np.array(ts, np.float64),
                   np.fromiter(map(EVENT_KINDS.__getitem__, kinds), np.float64, count=n),
                   np.fromiter(map(observed.__getitem__, kinds), bool, count=n))


class _Plan:
    """What every chunk reads: the engine's settings, the statistics as tables, the catalog's live rows."""

    def __init__(self, engine: Engine, channels: Sequence[RecallChannel], model: ServingModel | None) -> None:
        engine.catch_up()
        cfg = self.cfg = engine.config
        self.engine, self.channels = engine, list(channels)
        self.n_rows = engine.catalog.num_rows
        self.vectors = engine.text_vectors()
        self.accept = np.zeros(self.n_rows, bool)  # what recall's accept() lets through: live rows
        self.accept[engine.catalog.live_rows()] = True
        self.window = max(cfg.recent_window, cfg.context_window)
        self.half_life = cfg.half_life_days * _DAY
        self.observe_weights = dict(engine.users.kind_weights)
        self.weights = list(cfg.channel_weights)
        self.context: ContextRuntime | None = (model or engine.serving_model).context
        if self.context is not None:
            self.weights.append(self.context.fusion_weight(cfg.context_weight))
        self.transitions = {i: TransitionTable(ch) for i, ch in enumerate(self.channels)
                            if isinstance(ch, TransitionsChannel)}
        self.base = max([self.n_rows + 1] + [t.rows_needed for t in self.transitions.values()])
        for t in self.transitions.values():
            t.set_base(self.base)
        self.popularity = {i: PopularityTable(ch, self.base, self.accept) for i, ch in enumerate(self.channels)
                           if isinstance(ch, PopularityChannel)}
        self.first_popularity = min(self.popularity, default=None)
        self._table: torch.Tensor | None = None

    def item_table(self) -> torch.Tensor:
        """The context model's item tokens, for the candidate scorer."""
        if self._table is None:
            assert self.context is not None
            self._table = torch.from_numpy(self.context.model.item_vectors())
        return self._table


def _profiles(users: Sequence[_User], wanted: Sequence[Sequence[int]], vectors: np.ndarray,
              half_life: float) -> list[list[tuple[np.ndarray, float]]]:
    """Each user's decayed profile sum and weight after the first ``t`` steps, for each ``t`` in
    ``wanted[u]``: the user store's update (:meth:`~recsieve.engine.users.UserStore.apply`) step by
    step, over all users at once, in the same float operations (so the same bits)."""
    ends = [max(w) for w in wanted]
    order = sorted(range(len(users)), key=lambda u: -ends[u])
    if not order:
        return []
    length = ends[order[0]]
    rows = np.zeros((len(order), length), np.int64)
    mult = np.ones((len(order), length))
    coef = np.zeros((len(order), length))
    add = np.zeros((len(order), length))
    for i, u in enumerate(order):
        us, e = users[u], ends[u]
        ts, w = us.ts[:e], us.weight[:e]
        last = np.concatenate([[-math.inf], np.maximum.accumulate(ts)[:-1]])  # the store's last_ts before each
        forward = ts >= last
        gap = (np.where(forward, ts - last, last - ts) / half_life).tolist()
        d = np.array([0.0] + [0.5**x for x in gap[1:]])  # python's pow, as the store computes it
        rows[i, :e] = us.rows[:e]
        mult[i, :e] = np.where(forward, d, 1.0)  # an older event is decayed itself instead
        coef[i, :e] = np.where(forward, w, w * d)
        add[i, :e] = np.where(forward, np.abs(w), np.abs(w) * d)
    coef32 = coef.astype(np.float32)  # the store multiplies the float32 vector by a python float
    active = np.searchsorted(-np.array([ends[u] for u in order]), -np.arange(length), side="right")
    s = np.zeros((len(order), vectors.shape[1]))
    wsum = np.zeros(len(order))
    at: dict[int, list[int]] = {}
    for i, u in enumerate(order):
        for t in wanted[u]:
            at.setdefault(t - 1, []).append(i)
    snaps: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
    for j in range(length):
        m = active[j]  # users still going: the longest first
        s[:m] *= mult[:m, j, None]
        s[:m] += coef32[:m, j, None] * vectors[rows[:m, j]]
        wsum[:m] = wsum[:m] * mult[:m, j] + add[:m, j]
        for i in at.get(j, ()):
            snaps[(i, j + 1)] = (s[i].copy(), float(wsum[i]))
    rank = {u: i for i, u in enumerate(order)}
    return [[snaps[(rank[u], t)] for t in wanted[u]] for u in range(len(users))]


def _query(plan: _Plan, profile: np.ndarray | None, rows: np.ndarray, weights: np.ndarray,
           instruction: np.ndarray | None) -> np.ndarray | None:
    """Serving's query vector (:func:`~recsieve.engine.pipeline.query_vector`, the same function)."""
    return query_vector(plan.cfg, plan.vectors, profile, rows.tolist(), weights.tolist(), instruction)


@dataclass
class Requests:
    """Every (user, target) request of a build, prepared once: ``users[i]`` (a user's index in
    ``ids``) and ``targets[i]`` (the target's position in its steps), in the per-user loop's order,
    with each request's instruction text and vector, time, and (with a context model) the
    encoder's context and user vector."""

    ids: list[str]
    steps: list[_User]
    users: np.ndarray
    targets: np.ndarray
    texts: list[str | None]
    instructions: list[np.ndarray | None]
    nows: list[float]
    contexts: list[Context]
    user_vectors: list[np.ndarray | None]


@dataclass
class Recall:
    """Recall for a chunk of requests (``index`` into :class:`Requests`), as serving's recall stage
    gives it for each: ``lists[c]`` channel ``c``'s candidates (the context channel's last when the
    model has one), ``fused`` what fusion made of them, and what the features read."""

    index: np.ndarray
    lists: list[Lists]
    fused: Lists
    profiles: list[np.ndarray | None]
    recent: list[tuple[int, int]]  # each request's recent window: positions [a, b) in its user's steps
    recent_rows: list[np.ndarray]
    consumed: list[np.ndarray]  # each request's rows consumed before it (sorted)
    own_users: np.ndarray  # each request's user, as numbered in ``own``
    own: OwnSteps


def prepare(plan: _Plan, sequences: dict[str, list[Step]], targets: dict[str, list[int]],
            instruction_for: Callable[[int], str | None] | None, pool: ThreadPoolExecutor | None = None,
            shares: int = 1) -> Requests:
    """The requests of ``targets`` (users in sorted order, each user's targets in order). With a
    ``pool`` (whose threads must not change torch's thread count), the context encoder runs there
    on ``shares`` parts of the requests: each vector is a single request's either way."""
    engine, ctx = plan.engine, plan.context
    ids = sorted(targets)
    observed = {k: w > 0 for k, w in plan.observe_weights.items()}
    steps = [_User.of(sequences[u], observed) for u in ids]
    users = np.repeat(np.arange(len(ids)), [len(targets[u]) for u in ids])
    tpos = np.array([t for u in ids for t in targets[u]], np.int64)
    # in the per-user loop's order, so that a seeded draw in instruction_for gives the same requests
    texts = [instruction_for(sequences[ids[u]][t].item) if instruction_for is not None else None
             for u, t in zip(users.tolist(), tpos.tolist())]
    instructions = [engine.embed_text(x, "instruction") if x is not None else None for x in texts]
    nows = [float(steps[u].ts[t]) for u, t in zip(users.tolist(), tpos.tolist())]  # a missing time: the position
    contexts: list[Context] = []
    vectors: list[np.ndarray | None] = [None] * len(texts)
    if ctx is not None:
        settings = ctx.model.settings
        reads = settings.extra.get("reads", ())
        for u, t in zip(users.tolist(), tpos.tolist()):
            us, h = steps[u], max(0, t - plan.window)
            keep = np.flatnonzero(us.weight[h:t] > 0)[-settings.max_len:] + h
            contexts.append((us.rows[keep], [us.kinds[i] for i in keep.tolist()] if "kinds" in reads else None,
                             us.ts[keep] if "ages" in reads else None))
        if pool is None:
            vectors = user_vectors(ctx, contexts, instructions, nows)
        else:
            parts = np.array_split(np.arange(len(contexts)), max(1, shares))
            vectors = [v for got in pool.map(lambda i: user_vectors(ctx, [contexts[g] for g in i],
                                                                    [instructions[g] for g in i],
                                                                    [nows[g] for g in i]), parts) for v in got]
    return Requests(ids, steps, users, tpos, texts, instructions, nows, contexts, vectors)


def recall_chunks(engine: Engine, sequences: dict[str, list[Step]], targets: dict[str, list[int]],
                  channels: Sequence[RecallChannel], *,
                  instruction_for: Callable[[int], str | None] | None = None, model: ServingModel | None = None,
                  chunk: int = CHUNK_USERS, progress: bool = False) -> Iterator[tuple[_Plan, Requests, Recall]]:
    """Recall for every (user, target position) of ``targets``, with ``channels``' statistics
    leaving each user's own steps out, a chunk of users at a time: yields ``(plan, requests,
    recall)``. ``channels`` must have observed ``sequences`` (:func:`supported` channels only)."""
    with _one_blas_thread():
        plan = _Plan(engine, channels, model)
        req = prepare(plan, sequences, targets, instruction_for)
    with tqdm(total=len(req.ids), desc="ranking examples", unit="user", disable=not progress, leave=False) as bar:
        for index in _chunks(req, chunk):
            with _one_blas_thread():
                rec = _recall(plan, req, index)
            yield plan, req, rec
            bar.update(_users_in(req, index))


def _chunks(req: Requests, chunk: int) -> list[np.ndarray]:
    """The requests of each ``chunk`` users (a user's requests in one chunk), as indices into ``req``."""
    bounds = np.searchsorted(req.users, np.arange(0, len(req.ids) + chunk, chunk))
    return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _users_in(req: Requests, index: np.ndarray) -> int:
    return int(np.unique(req.users[index]).size)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread meanwhile (where threadpoolctl is installed): the matrices here
    are one request's (a few hundred rows), which a BLAS thread pool slows down rather than
    speeds up -- twentyfold on a busy two-core machine. Recall's order does not depend on it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _recall(plan: _Plan, req: Requests, index: np.ndarray) -> Recall:
    cfg, n = plan.cfg, plan.cfg.recall_n
    chunk_users = np.unique(req.users[index])
    local = {int(u): i for i, u in enumerate(chunk_users)}
    own_users = np.array([local[int(u)] for u in req.users[index]], np.int64)
    positives = [req.steps[u].rows[req.steps[u].observed] for u in chunk_users.tolist()]
    own = OwnSteps(positives, plan.base)
    owned = [unique_sorted(p) for p in positives]
    wanted: dict[int, list[int]] = {}
    for u, t in zip(own_users.tolist(), req.targets[index].tolist()):
        wanted.setdefault(u, []).append(t)
    states = _profiles([req.steps[u] for u in chunk_users.tolist()], [wanted[u] for u in range(len(chunk_users))],
                       plan.vectors, plan.half_life)
    seen: dict[int, int] = {}
    profiles, recents, recent_rows, consumed, queries = [], [], [], [], []
    for g, (u, t) in enumerate(zip(own_users.tolist(), req.targets[index].tolist())):
        us = req.steps[chunk_users[u]]
        j = seen[u] = seen.get(u, -1) + 1
        s, w = states[u][j]
        profiles.append((s / w).astype(np.float32) if w > 0 and np.linalg.norm(s) > 1e-9 * w else None)
        a = max(0, t - cfg.recent_window)
        recents.append((a, t))
        recent_rows.append(us.rows[a:t][us.weight[a:t] > 0])
        consumed.append(unique_sorted(us.rows[:t]))
        b = max(a, t - cfg.short_term_events)
        queries.append(_query(plan, profiles[-1], us.rows[b:t], us.weight[b:t], req.instructions[index[g]]))
    n_req = index.size
    excluded = consumed if cfg.exclude_consumed else [np.empty(0, np.int64)] * n_req
    exclude = KeySet(np.concatenate([g * plan.base + c for g, c in enumerate(excluded)] or [np.empty(0, np.int64)]),
                     n_req * plan.base)
    lists: list[Lists] = []
    for i, ch in enumerate(plan.channels):
        if isinstance(ch, VectorChannel):
            lists.append(_searched(ch.index, queries, n, excluded, plan.accept, ch.params))
        elif isinstance(ch, TransitionsChannel):
            table = plan.transitions[i]
            lists.append(table.recall([r.tolist() for r in recent_rows], own_users, own, n, plan.accept, exclude,
                                      table.taken_out(own)))
        else:
            positive_only = np.array([q is not None or r.size > 0 for q, r in zip(queries, recent_rows)], bool)
            lists.append(plan.popularity[i].recall(owned, own_users, own, n, exclude,
                                                   np.array([c.size for c in excluded], np.int64), positive_only,
                                                   plan.base))
    if plan.context is not None:
        lists.append(_searched(plan.context.index, [req.user_vectors[i] for i in index.tolist()], n, excluded,
                               plan.accept, None))
    fused = fuse_many(lists, plan.weights, n, plan.base)
    return Recall(index, lists, fused, profiles, recents, recent_rows, consumed, own_users, own)


def _searched(index, queries: Sequence[np.ndarray | None], n: int, excluded: Sequence[np.ndarray],
              accept: np.ndarray, params) -> Lists:
    """A search channel's lists: no candidates for a request without a query."""
    have = [g for g, q in enumerate(queries) if q is not None]
    found = search_many(index, np.stack([queries[g] for g in have]) if have else np.zeros((0, 1), np.float32), n,
                        [excluded[g] for g in have], accept, params)
    parts = [(np.empty(0, np.int64), np.empty(0, np.float32))] * len(queries)
    for g, got in zip(have, found):
        parts[g] = got
    return Lists.concat(parts)


def batched_groups(engine: Engine, sequences: dict[str, list[Step]], targets: dict[str, list[int]],
                   channels: Sequence[RecallChannel], *, instruction_for: Callable[[int], str | None] | None = None,
                   model: ServingModel | None = None, chunk: int = CHUNK_USERS, threads: int | None = None,
                   progress: bool = False) -> list[tuple[str, np.ndarray, int, np.ndarray, Callable[[], str]]]:
    """``(user, features, target position among the candidates, candidate rows, context)`` of every
    (user, target) of ``targets`` whose target recall finds, in
    :func:`~recsieve.training.examples.groups_for`'s order, each with ``channels``' statistics
    leaving its user's steps out: the fields of the
    :class:`~recsieve.training.examples.RankingGroup` the per-user loop builds (the context as a
    function that renders it).

    Chunks run on ``threads`` threads (default :func:`default_threads`), each chunk's FAISS
    searches on one OpenMP thread: most of a chunk's time is numpy and FAISS, which release the
    GIL. The groups do not depend on the number of threads."""
    n_threads = max(1, threads if threads is not None else default_threads())
    with _one_blas_thread():
        plan = _Plan(engine, channels, model)
    # torch's thread count is the process's: set here to what the model's inference asks, once, so
    # that the encoder's and the scorer's own settings of it (on the pool's threads) change nothing
    model_threads = plan.context.model.threads if plan.context is not None else None
    groups = []
    with _one_blas_thread(), torch_threads(model_threads), \
            ThreadPoolExecutor(n_threads, initializer=_one_openmp_thread) as pool:
        req = prepare(plan, sequences, targets, instruction_for, pool if n_threads > 1 else None, n_threads)
        if plan.context is not None:
            plan.item_table()  # built once, before the threads read it
        chunks = _chunks(req, chunk)

        def build(index: np.ndarray) -> list[tuple[str, np.ndarray, int, np.ndarray, Callable[[], str]]]:
            return _examples(plan, req, _recall(plan, req, index))

        with tqdm(total=len(req.ids), desc="ranking examples", unit="user", disable=not progress,
                  leave=False) as bar:
            for index, got in zip(chunks, pool.map(build, chunks) if n_threads > 1 else map(build, chunks)):
                groups += got
                bar.update(_users_in(req, index))
    return groups


def default_threads() -> int:
    """Threads for :func:`batched_groups`: two where the process may run on two or more CPU cores
    (measured on two cores: a third thread gained nothing, the GIL-bound parts queue)."""
    return min(2, usable_cpus())


def _one_openmp_thread() -> None:
    """A pool thread's own OpenMP setting (per thread): its FAISS searches on one thread."""
    faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class _Cands:
    """Fused candidates as :func:`~recsieve.engine.ranker.candidate_features` reads them (rows only)."""

    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def _examples(plan: _Plan, req: Requests,
              rec: Recall) -> list[tuple[str, np.ndarray, int, np.ndarray, Callable[[], str]]]:
    """(user, features, target position, rows, context) of each request whose target was recalled;
    the context is a function that renders it (serving's rendering, when it is first read)."""
    fused = rec.fused
    hits, at = [], []
    for g, i in enumerate(rec.index.tolist()):
        found = np.flatnonzero(fused.get(g)[0] == req.steps[req.users[i]].rows[req.targets[i]])
        if found.size:
            hits.append(g)
            at.append(int(found[0]))
    if not hits:
        return []
    hits_a = np.array(hits, np.int64)
    cands = fused.subset(hits_a)
    per_list = list_features(cands, [lst.subset(hits_a) for lst in rec.lists], plan.base)
    g_of = hits_a[cands.groups()]
    users = rec.own_users[g_of]
    if plan.first_popularity is not None:
        table = plan.popularity[plan.first_popularity]
        shares = table.share(users, cands.rows, rec.own, table.totals(rec.own, rec.own.n_users))
    else:
        shares = np.zeros(cands.rows.size, np.float32)
    extra_cols = []
    for i, ch in enumerate(plan.channels):  # the channels' own features, in their order
        if isinstance(ch, TransitionsChannel):
            t = plan.transitions[i]
            last = np.array([r[-1] if r.size else -1 for r in rec.recent_rows], np.int64)[g_of]
            extra_cols.append(t.last_share(last, users, cands.rows, rec.own, t.taken_out(rec.own))[:, None])
    ctx = plan.context
    if ctx is not None:  # the context channel's: the encoder's, the candidate scorer's and co-occurrence scores
        idx = rec.index[hits_a].tolist()
        encoder = np.zeros(cands.rows.size, np.float32)
        for k, i in enumerate(idx):
            user = req.user_vectors[i]
            a, b = cands.offsets[k], cands.offsets[k + 1]
            if user is not None and b > a:
                encoder[a:b] = ctx.model.item_vectors_of(cands.rows[a:b]) @ user
        counts = ctx.model.cooccurrence
        cooc = np.zeros(cands.rows.size, np.float32) if counts is None else \
            counts.scores_many([req.contexts[i][0] for i in idx], cands.rows, cands.offsets)
        has_user = [req.user_vectors[i] is not None for i in idx]
        scores = cross_scores(ctx, [req.contexts[i] for i in idx],
                              [cands.get(k)[0] if has_user[k] else cands.rows[:0] for k in range(len(idx))],
                              [req.instructions[i] for i in idx], [req.nows[i] for i in idx], plan.item_table())
        extra_cols.append(np.stack([encoder, np.concatenate(scores) if scores else encoder[:0], cooc], axis=1))
    out = []
    for k, g in enumerate(hits):
        a, b = cands.offsets[k], cands.offsets[k + 1]
        rows = cands.rows[a:b]
        i = int(rec.index[g])
        x = candidate_features(_Cands(rows), [], plan.vectors, profile=rec.profiles[g],  # type: ignore[arg-type]
                               recent_rows=rec.recent_rows[g].tolist(), instruction=req.instructions[i],
                               popularity=shares[a:b], short_term=plan.cfg.short_term_events,
                               extra=np.concatenate([c[a:b] for c in extra_cols], axis=1) if extra_cols else None)
        user = req.ids[req.users[i]]
        r0, r1 = rec.recent[g]
        us = req.steps[req.users[i]]
        render = partial(_render, plan.engine, rec.profiles[g], us.rows[r0:r1], us.kinds[r0:r1], us.ts[r0:r1],
                         us.weight[r0:r1], r1, req.texts[i], req.nows[i])
        out.append((user, np.concatenate([per_list[a:b], x], axis=1), at[k], rows, render))
    return out


def _render(engine: Engine, profile: np.ndarray | None, rows: np.ndarray, kinds: list[str], ts: np.ndarray,
            weight: np.ndarray, seen: int, text: str | None, now: float) -> str:
    """A request's context text, rendered by serving from a view of what it reads (the recent events)."""
    recent = tuple(map(RecentEvent, rows.tolist(), kinds, ts.tolist(), weight.tolist()))
    view = UserView("(history)", profile, recent, frozenset(), seen, -math.inf, recent)
    return engine.render_context(view, text, now=now)
