"""Training data from an engine's interaction log: per-user step sequences, the cross-encoder's
(context, candidates) examples, and the ranking head's groups (recall run on each user's history
before a step, with statistics that leave that user out).

For each user, events are ordered by time. Contexts are rendered exactly as serving renders
them (:meth:`~recsieve.engine.engine.Engine.render_context`); candidates come from the
engine's own recall (:meth:`~recsieve.engine.engine.Engine.recall_stage`), and features from
the same function serving uses (:meth:`~recsieve.engine.engine.Engine.features`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.engine.engine import Engine
from recsieve.engine.models import ServingModel
from recsieve.errors import UnknownItemError
from recsieve.rerankers.training import Example, Step, build_examples, make_render
from recsieve.training.batched_examples import batched_groups, supported
from recsieve.types import EVENT_KINDS, Event

__all__ = ["RANKER_USERS", "last_positives", "sample_users", "engine_sequences", "engine_examples", "RankingGroup",
           "ranking_groups", "observe_steps", "observe_all", "groups_for", "save_replay", "load_replay"]

#: Users whose last steps the ranking head learns from, by default (a seeded sample): enough for
#: the head's few thousand weights, and a bounded cost however many users the log holds.
RANKER_USERS = 4000


def engine_sequences(engine: Engine, events: Sequence[Event] | None = None) -> dict[str, list[Step]]:
    """Per-user time-ordered steps (catalog rows) from ``events``, or from the engine's journal
    up to what this process has applied (another process may have journaled more since)."""
    by_user: dict[str, list[tuple[float, int, Step]]] = defaultdict(list)
    if events is None:
        for rec in engine.journal.events(upto=engine.applied_seq):
            by_user[rec.user_id].append((rec.ts, rec.seq, Step(rec.row, rec.kind, rec.ts, rec.text)))
    else:
        for i, ev in enumerate(events):
            if ev.item_id not in engine.catalog:
                raise UnknownItemError(f"events[{i}].item_id", ev.item_id)
            ts = float(ev.ts) if ev.ts is not None else float(i)
            by_user[ev.user_id].append((ts, i, Step(engine.catalog.row(ev.item_id), ev.kind, ts, ev.text)))
    return {u: [s for _, _, s in sorted(steps, key=lambda x: (x[0], x[1]))] for u, steps in by_user.items()}


def engine_examples(
    engine: Engine,
    sequences: dict[str, list[Step]],
    *,
    users: int | None = None,
    steps_per_user: int = 3,
    n_hard: int = 7,
    n_random: int = 2,
    max_history: int = 10,
    seed: int = 0,
) -> tuple[list[Example], list[Example]]:
    """(train, valid) examples: valid = each sampled user's last positive step, train = earlier steps."""
    rng = np.random.default_rng(seed)
    ids = sorted(u for u, s in sequences.items() if len(s) >= 3)
    if users is not None and users < len(ids):
        ids = sorted(rng.choice(ids, size=users, replace=False).tolist())
    n_rows = engine.catalog.num_rows
    texts = [engine.catalog.text(r) if engine.catalog.is_live(r) else engine.catalog.title(r) for r in range(n_rows)]
    titles = [engine.catalog.title(r) for r in range(n_rows)]
    render = make_render(titles)

    def negatives(history: list[int], n: int) -> list[int]:
        view = engine.history_view(history)
        return engine.recall_view(view, max(n * 4, 20)).rows.tolist()

    train_seqs, valid_seqs = [], []
    for u in ids:
        seq = sequences[u]
        last = max((t for t in range(1, len(seq)) if EVENT_KINDS.get(seq[t].kind, 1.0) > 0), default=None)
        if last is None:
            continue
        train_seqs.append(seq[:last])
        valid_seqs.append(seq[: last + 1])
    common = dict(max_history=max_history, n_hard=n_hard, n_random=n_random, seed=seed)
    train = build_examples(train_seqs, texts, render, negatives, steps_per_user=steps_per_user, **common)
    valid = build_examples(valid_seqs, texts, render, negatives, last_only=True, **common)
    return train, valid


def sample_users(candidates: Collection[str], users: int | None, seed: int) -> list[str]:
    """The seeded sample of ``users`` of ``candidates`` (all of them when ``users`` is None or not
    fewer), sorted: the one rule by which training picks whose steps become examples."""
    ids = sorted(candidates)
    if users is not None and users < len(ids):
        ids = sorted(np.random.default_rng(seed).choice(ids, size=users, replace=False).tolist())
    return ids


def last_positives(seq: Sequence[Step], k: int) -> list[int]:
    """Positions of the last ``k`` positive steps that have some history before them."""
    if k <= 0:  # [-0:] is every one
        return [t for t in range(1, len(seq)) if EVENT_KINDS.get(seq[t].kind, 1.0) > 0][-k:]
    out: list[int] = []
    for t in range(len(seq) - 1, 0, -1):  # from the end: a long history is not read in full
        if len(out) >= k:
            break
        if EVENT_KINDS.get(seq[t].kind, 1.0) > 0:
            out.append(t)
    return out[::-1]


@dataclass
class RankingGroup:
    """One user's last step as a ranking example: the recalled candidates' features, the
    target's position among them, and what is needed to score them with a cross-encoder.
    ``weight``: how much the example counts in the head's loss (see
    :func:`~recsieve.training.cold.pseudo_cold_groups`). ``rendered``: the context text, or a
    function giving it (the batched builder defers rendering to the first read of :attr:`context`,
    which only the word-level cross-encoder's training makes; it reads the engine's catalog then,
    so read it while the engine is open)."""

    user_id: str
    features: np.ndarray
    target: int
    rows: np.ndarray
    rendered: str | Callable[[], str]
    weight: float = 1.0

    @property
    def context(self) -> str:
        """The user-context text the word-level cross-encoder reads (serving's rendering)."""
        if not isinstance(self.rendered, str):
            self.rendered = self.rendered()
        return self.rendered


def ranking_groups(
    engine: Engine,
    sequences: dict[str, list[Step]],
    *,
    users: int | None = None,
    steps_per_user: int = 1,
    seed: int = 0,
    progress: bool = False,
    new_from: Mapping[str, int] | None = None,
    instruction_for: Callable[[int], str | None] | None = None,
    channels: Sequence[Any] | None = None,
    model: ServingModel | None = None,
    batch: bool = True,
    among: Collection[str] | None = None,
    threads: int | None = None,
) -> tuple[list[RankingGroup], int]:
    """Ranking examples for the head: each sampled user's last ``steps_per_user`` positive steps,
    with recall run on the history before each.

    Recall statistics (transitions, popularity) **leave the user out**: they count every
    user's steps, and while a user's examples are built that user's own steps are taken out
    of them (:meth:`~recsieve.engine.recall.RecallChannel.forget`) and put back after. So
    the head never learns from a feature that already counts its own label, while everyone
    else's behaviour up to the present (a trend, a newly popular item) is there to learn
    from, at the strength serving sees it. ``channels``: statistics that already observed
    exactly ``sequences`` (the per-user loop changes them while it runs and restores them
    after, so pass a copy of live ones; the batched builder only reads them), else they are
    built here. ``new_from``: only positions from
    ``new_from[user]`` on may be targets (users not in it give none) -- for continual
    updates. ``instruction_for``: see :func:`groups_for`. ``users``: a seeded sample of this many
    users (:func:`sample_users`; default: all; training caps it, see :data:`RANKER_USERS`), drawn
    from ``among`` when given.

    ``batch`` (default): build them in chunks of users
    (:mod:`recsieve.training.batched_examples`): the same groups -- candidates, order, targets,
    contexts, features to float rounding -- without changing ``channels``: each user's steps are
    subtracted from the statistics where they are read. ``batch=False``, or channels other than
    the built-in ones: the loop over users above, one recall per step. ``threads``: the batched
    builder's (:func:`~recsieve.training.batched_examples.batched_groups`; default two, where the
    process has two cores).

    Returns the groups whose target was recalled and the number of users tried.
    """
    lasts: dict[str, list[int]] = {}
    for u, seq in sequences.items():
        targets = last_positives(seq, steps_per_user)
        if new_from is not None:
            targets = [t for t in targets if t >= new_from.get(u, len(seq))]
        if targets and (among is None or u in among):
            lasts[u] = targets
    ids = sample_users(lasts, users, seed)
    if batch and supported(channels if channels is not None else engine.new_statistics()):
        if channels is None:
            channels = engine.new_statistics()
            observe_all(engine, channels, sequences)
        built = batched_groups(engine, sequences, {u: lasts[u] for u in ids}, channels,
                               instruction_for=instruction_for, model=model, threads=threads, progress=progress)
        return [RankingGroup(*fields) for fields in built], len(ids)
    if channels is None:
        channels = engine.new_statistics()
        for u in sorted(sequences):
            observe_steps(engine, channels, sequences[u])
    groups: list[RankingGroup] = []
    for u in tqdm(ids, desc="ranking examples", unit="user", disable=not progress, leave=False):
        observe_steps(engine, channels, sequences[u], forget=True)
        try:
            groups += groups_for(engine, sequences, {u: lasts[u]}, channels, instruction_for=instruction_for,
                                 model=model)
        finally:
            observe_steps(engine, channels, sequences[u])
    return groups, len(ids)


def observe_steps(engine: Engine, channels: Sequence[Any], steps: Sequence[Step], *, forget: bool = False) -> None:
    """Feed one user's steps, in order, to recall channels' statistics (as the engine does);
    ``forget=True`` takes exactly those steps out again."""
    prev = None
    for step in steps:
        positive = engine.users.event_weight(step.kind, None) > 0
        for ch in channels:
            (ch.forget if forget else ch.observe)(prev, step.item, positive)
        if positive:
            prev = step.item


def observe_all(engine: Engine, channels: Sequence[Any], sequences: dict[str, list[Step]]) -> None:
    """:func:`observe_steps` of every user's steps (in user order), with each channel's
    ``observe_many``: the same statistics, without a Python call per event."""
    seqs = [sequences[u] for u in sorted(sequences)]
    n = sum(len(q) for q in seqs)
    if not n:
        return
    positive_kind = {k: w > 0 for k, w in engine.users.kind_weights.items()}
    # map/attrgetter: iterated in C, a third of the time of a generator over a million steps
    rows = np.fromiter(map(attrgetter("item"), chain.from_iterable(seqs)), np.int64, count=n)
    positive = np.fromiter(map(positive_kind.__getitem__, map(attrgetter("kind"), chain.from_iterable(seqs))), bool,
                           count=n)
    starts = np.repeat(np.cumsum([0] + [len(q) for q in seqs[:-1]]), [len(q) for q in seqs])
    # each step's previous positive step of the same user: the latest positive position before it
    mark = np.where(positive, np.arange(n), -1)
    before = np.maximum.accumulate(np.concatenate([[-1], mark[:-1]]))
    prev = np.where(before >= starts, rows[np.maximum(before, 0)], -1)
    for ch in channels:
        ch.observe_many(prev, rows, positive)


def groups_for(engine: Engine, sequences: dict[str, list[Step]], targets: dict[str, list[int]],
               channels: Sequence[Any], *, progress: bool = False,
               instruction_for: Callable[[int], str | None] | None = None,
               model: ServingModel | None = None) -> list[RankingGroup]:
    """A :class:`RankingGroup` per (user, target position) whose target recall (on ``channels``) finds.

    ``instruction_for(target_row)``: a request the target satisfies, or ``None``; when given,
    recall, features and context read it as serving would.
    """
    groups = []
    for u in tqdm(sorted(targets), desc="ranking examples", unit="user", disable=not progress, leave=False):
        seq = sequences[u]
        for last in targets[u]:
            history = seq[:last]
            view = engine.history_view([s.item for s in history], [s.kind for s in history],
                                       [s.ts if s.ts is not None else float(i) for i, s in enumerate(history)])
            text = instruction_for(seq[last].item) if instruction_for is not None else None
            now = seq[last].ts if seq[last].ts is not None else float(last)
            recalled = engine.recall_stage(view, instruction=text, statistics=channels, now=now, model=model)
            hit = np.flatnonzero(recalled.cands.rows == seq[last].item)
            if hit.size == 0:
                continue
            groups.append(RankingGroup(u, engine.features(view, recalled), int(hit[0]), recalled.cands.rows,
                                       engine.render_context(view, text, now=now)))
    return groups


def save_replay(folder: Path, groups: Sequence[RankingGroup], limit: int = 2000, seed: int = 0) -> None:
    """Keep a sample of (at most ``limit``) training groups (with their weights) beside a head, for replay in
    later updates."""
    if len(groups) > limit:
        pick = np.random.default_rng(seed).choice(len(groups), size=limit, replace=False)
        groups = [groups[i] for i in sorted(pick)]
    if not groups:
        return
    tmp = folder / "replay.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, x=np.concatenate([g.features for g in groups]).astype(np.float16),
                 sizes=np.array([len(g.rows) for g in groups], np.int64),
                 targets=np.array([g.target for g in groups], np.int64),
                 users=np.array([g.user_id for g in groups]),
                 weights=np.array([g.weight for g in groups], np.float32))
    tmp.replace(folder / "replay.npz")


def load_replay(folder: Path) -> list[RankingGroup]:
    """The replay sample saved by :func:`save_replay` (empty when there is none)."""
    path = folder / "replay.npz"
    if not path.exists():
        return []
    with np.load(path, allow_pickle=False) as z:
        x, sizes, targets, users = z["x"].astype(np.float32), z["sizes"], z["targets"], z["users"]
        weights = z["weights"].tolist() if "weights" in z.files else [1.0] * len(sizes)  # older samples: 1
    out, start = [], 0
    for n, t, u, w in zip(sizes.tolist(), targets.tolist(), users.tolist(), weights):
        out.append(RankingGroup(str(u), x[start:start + n], int(t), np.zeros(n, np.int64), "", float(w)))
        start += n
    return out


