"""Training an engine's re-ranker from its interaction log (``recsieve train-reranker``).

For each user, events are ordered by time. The last positive event of each user is a
validation target (a split by time: validation always lies after what training sees of
that user); earlier steps are training targets. Contexts are rendered exactly as serving
renders them; hard negatives come from the engine's own recall for the history before
the target, plus random items.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.engine.engine import Engine
from recsieve.engine.ranker import fit_head, listwise_ndcg
from recsieve.errors import InvalidInputError, UnknownItemError
from recsieve.rerankers.training import (
    Example,
    Step,
    TrainReport,
    build_examples,
    make_render,
    train_reranker,
)
from recsieve.storage import replacing_folder
from recsieve.types import EVENT_KINDS, Event

__all__ = ["engine_sequences", "engine_examples", "ranking_groups", "train_engine_reranker", "train_engine_ranker"]


def engine_sequences(engine: Engine, events: Sequence[Event] | None = None) -> dict[str, list[Step]]:
    """Per-user time-ordered steps (catalog rows) from ``events``, or from the engine's journal."""
    by_user: dict[str, list[tuple[float, int, Step]]] = defaultdict(list)
    if events is None:
        for rec in engine.journal.events():
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


def train_engine_reranker(
    engine: Engine,
    out: str | Path,
    events: Sequence[Event] | None = None,
    *,
    users: int | None = None,
    steps_per_user: int = 3,
    n_hard: int = 7,
    n_random: int = 2,
    epochs: float = 1,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 128,
    loss: str = "bce",
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainReport:
    """Fine-tune a cross-encoder (from the bundled MiniLM) on the engine's interactions; save to ``out``."""
    sequences = engine_sequences(engine, events)
    if not sequences:
        raise InvalidInputError("events", 0, "no events to train on")
    train, valid = engine_examples(engine, sequences, users=users, steps_per_user=steps_per_user, n_hard=n_hard,
                                   n_random=n_random, seed=seed)
    if not train or not valid:
        raise InvalidInputError("events", len(sequences), "too few users with 3+ events to train and validate")
    return train_reranker(train, valid, out=out, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                          loss=loss, seed=seed, progress=progress, overwrite=overwrite)


def _last_positives(seq: Sequence[Step], k: int) -> list[int]:
    """Positions of the last ``k`` positive steps that have some history before them."""
    return [t for t in range(1, len(seq)) if EVENT_KINDS.get(seq[t].kind, 1.0) > 0][-k:]


@dataclass
class RankingGroup:
    """One user's last step as a ranking example: the recalled candidates' features, the
    target's position among them, and what is needed to score them with a cross-encoder."""

    user_id: str
    features: np.ndarray
    target: int
    rows: np.ndarray
    context: str


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
) -> tuple[list[RankingGroup], int]:
    """Ranking examples for the head: each sampled user's last ``steps_per_user`` positive steps,
    with recall run on the history before each.

    Recall statistics (transitions, popularity) **leave the user out**: they count every
    user's steps, and while a user's examples are built that user's own steps are taken out
    of them (:meth:`~recsieve.engine.recall.RecallChannel.forget`) and put back after. So
    the head never learns from a feature that already counts its own label, while everyone
    else's behaviour up to the present (a trend, a newly popular item) is there to learn
    from, at the strength serving sees it. ``channels``: statistics that already observed
    exactly ``sequences`` (they are changed while this runs and restored after; pass a copy
    of live ones), else they are built here. ``new_from``: only positions from
    ``new_from[user]`` on may be targets (users not in it give none) -- for continual
    updates. ``instruction_for``: see :func:`groups_for`.

    Returns the groups whose target was recalled and the number of users tried.
    """
    lasts: dict[str, list[int]] = {}
    for u, seq in sequences.items():
        targets = _last_positives(seq, steps_per_user)
        if new_from is not None:
            targets = [t for t in targets if t >= new_from.get(u, len(seq))]
        if targets:
            lasts[u] = targets
    rng = np.random.default_rng(seed)
    ids = sorted(lasts)
    if users is not None and users < len(ids):
        ids = sorted(rng.choice(ids, size=users, replace=False).tolist())
    if channels is None:
        channels = engine._make_channels()
        for u in sorted(sequences):
            observe_steps(engine, channels, sequences[u])
    groups: list[RankingGroup] = []
    for u in tqdm(ids, desc="ranking examples", unit="user", disable=not progress, leave=False):
        observe_steps(engine, channels, sequences[u], forget=True)
        try:
            groups += groups_for(engine, sequences, {u: lasts[u]}, channels, instruction_for=instruction_for)
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


def groups_for(engine: Engine, sequences: dict[str, list[Step]], targets: dict[str, list[int]],
               channels: Sequence[Any], *, progress: bool = False,
               instruction_for: Callable[[int], str | None] | None = None) -> list[RankingGroup]:
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
            inst = engine.embed_text(text, "instruction") if text is not None else None
            recalled = engine._recall(view, engine.config.recall_n, inst, None, channels)
            hit = np.flatnonzero(recalled.cands.rows == seq[last].item)
            if hit.size == 0:
                continue
            now = seq[last].ts if seq[last].ts is not None else float(last)
            groups.append(RankingGroup(u, engine.features(view, recalled), int(hit[0]), recalled.cands.rows,
                                       engine.render_context(view, text, now=now)))
    return groups


def save_replay(folder: Path, groups: Sequence[RankingGroup], limit: int = 2000, seed: int = 0) -> None:
    """Keep a sample of (at most ``limit``) training groups beside a head, for replay in later updates."""
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
                 users=np.array([g.user_id for g in groups]))
    tmp.replace(folder / "replay.npz")


def load_replay(folder: Path) -> list[RankingGroup]:
    """The replay sample saved by :func:`save_replay` (empty when there is none)."""
    path = folder / "replay.npz"
    if not path.exists():
        return []
    with np.load(path, allow_pickle=False) as z:
        x, sizes, targets, users = z["x"].astype(np.float32), z["sizes"], z["targets"], z["users"]
    out, start = [], 0
    for n, t, u in zip(sizes.tolist(), targets.tolist(), users.tolist()):
        out.append(RankingGroup(str(u), x[start:start + n], int(t), np.zeros(n, np.int64), ""))
        start += n
    return out


def _mean_ndcg(scores: Sequence[np.ndarray], groups: Sequence[RankingGroup]) -> float:
    return float(np.mean([listwise_ndcg(s, g.target) for s, g in zip(scores, groups)])) if groups else 0.0


def _recall_order(g: RankingGroup) -> np.ndarray:
    return -np.arange(len(g.rows), dtype=np.float32)


def fit_blend(head_scores: Sequence[np.ndarray], text_scores: Sequence[np.ndarray], groups: Sequence[RankingGroup],
              top: int, grid: Sequence[float] = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)) -> tuple[float, dict[str, float]]:
    """The cross-encoder weight (from ``grid``) with the best NDCG@10 on ``groups``; ties keep the smaller.

    ``text_scores[i]`` scores the head's top ``top`` candidates of group ``i`` (head order).
    """
    table = {}
    for w in grid:
        finals = []
        for hs, ts in zip(head_scores, text_scores):
            order = np.argsort(-hs, kind="stable")[:top]
            final = hs.copy()
            final[order] += w * ts
            rest = np.ones(len(hs), bool)
            rest[order] = False
            if rest.any():
                final[rest] = final[order].min() - 1.0 - (hs[rest].max() - hs[rest])
            finals.append(final)
        table[str(w)] = _mean_ndcg(finals, groups)
    best = max(grid, key=lambda w: (table[str(w)], -w))
    return float(best), table


def train_engine_ranker(
    engine: Engine,
    out: str | Path,
    events: Sequence[Event] | None = None,
    *,
    users: int | None = 4000,
    steps_per_user: int = 3,
    instruction_share: float = 0.0,
    valid_fraction: float = 0.1,
    hidden: int = 32,
    epochs: int = 60,
    train_cross_encoder: Callable[[Path], TrainReport] | None = None,
    blend_top: int = 20,
    blend_groups: int = 300,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the engine's re-ranker into the folder ``out``: a ranking head over recall's
    features and, when ``train_cross_encoder`` is given (a function that trains a cross-encoder
    into the folder it is passed, e.g. a :func:`functools.partial` of
    :func:`train_engine_reranker`), a cross-encoder whose weight in the ``full`` tier is fitted
    on (at most ``blend_groups`` of) the head's validation examples, re-scoring the head's top
    ``blend_top``. Returns the training report.

    Users are split at random into training and validation (``valid_fraction``); each
    contributes its last ``steps_per_user`` steps (see :func:`ranking_groups`). With
    ``instruction_share`` > 0, that share of examples carries a plain-words request made from
    the target's own attributes (:func:`~recsieve.engine.requests.request_for`), so the head
    learns how much an instruction should count. The folder is assembled next to ``out`` and
    renamed into place when complete; an existing ``out`` is replaced only with ``overwrite``.
    """
    t0 = time.perf_counter()
    out_path = Path(out).expanduser().absolute()
    if out_path.exists() and not overwrite:
        raise InvalidInputError("out", str(out_path), "already exists; pass overwrite=True to replace it")
    if not 0.0 < valid_fraction < 1.0:
        raise InvalidInputError("valid_fraction", valid_fraction, "must be between 0 and 1")
    if not 0.0 <= instruction_share <= 1.0:
        raise InvalidInputError("instruction_share", instruction_share, "must be between 0 and 1")
    sequences = engine_sequences(engine, events)
    instruction_for = None
    if instruction_share > 0:
        from recsieve.engine.requests import request_for

        ask = np.random.default_rng(seed + 1)

        def instruction_for(row: int) -> str | None:
            if ask.random() >= instruction_share:
                return None
            request = request_for(engine.catalog.get(engine.catalog.item_id(row)), ask)
            return None if request is None else request.text

    groups, tried = ranking_groups(engine, sequences, users=users, steps_per_user=steps_per_user, seed=seed,
                                   progress=progress, instruction_for=instruction_for)
    rng = np.random.default_rng(seed)
    user_ids = sorted({g.user_id for g in groups})
    valid_users = {u for u, v in zip(user_ids, rng.random(len(user_ids)) < valid_fraction) if v}
    if not valid_users and len(user_ids) >= 2:  # a small log: still hold one user out
        valid_users = {user_ids[int(rng.integers(len(user_ids)))]}
    train = [g for g in groups if g.user_id not in valid_users]
    valid = [g for g in groups if g.user_id in valid_users]
    if len(train) < 2 or not valid:
        raise InvalidInputError("events", len(sequences), "too few users whose next item recall finds to train and validate")
    head = fit_head([g.features for g in train], [g.target for g in train], engine.feature_names(),
                    valid=([g.features for g in valid], [g.target for g in valid]), hidden=hidden, epochs=epochs,
                    seed=seed)
    head_scores = [head.score(g.features) for g in valid]
    report: dict[str, Any] = {
        "users_tried": tried, "examples": len(groups),
        "train_users": len({g.user_id for g in train}), "valid_users": len(valid_users),
        "train_examples": len(train), "valid_examples": len(valid),
        "valid_ndcg@10_recall_order": _mean_ndcg([_recall_order(g) for g in valid], valid),
        "valid_ndcg@10_head": _mean_ndcg(head_scores, valid),
    }
    with replacing_folder(out_path) as work:
        if train_cross_encoder is not None:
            from recsieve.rerankers.cross_encoder import CrossEncoderReranker

            ce_report = train_cross_encoder(work / "cross-encoder")
            ce = CrossEncoderReranker(str(work / "cross-encoder"))
            text_scores = []
            fit_on = valid[:blend_groups]
            for g, hs in zip(tqdm(fit_on, desc="blend", unit="user", disable=not progress, leave=False), head_scores):
                order = np.argsort(-hs, kind="stable")[:blend_top]
                text_scores.append(ce.score(g.context, [engine._item_text(int(r)) for r in g.rows[order]]))
            head.blend, table = fit_blend(head_scores[: len(fit_on)], text_scores, fit_on, blend_top)
            report["blend_groups"] = len(fit_on)
            head.cross_encoder, head.blend_top = "cross-encoder", blend_top
            report.update(cross_encoder=ce_report.to_dict(), blend_table=table, blend=head.blend)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        report["trained_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["journal_seq"] = engine.journal.last_seq if events is None else 0
        head.report = {**head.report, **report}
        head.save(work)
        save_replay(work, train)
    return head.report

