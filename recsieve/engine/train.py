"""Training an engine's re-ranker from its interaction log (``recsieve train-reranker``).

For each user, events are ordered by time. The last positive event of each user is a
validation target (a split by time: validation always lies after what training sees of
that user); earlier steps are training targets. Contexts are rendered exactly as serving
renders them; hard negatives come from the engine's own recall for the history before
the target, plus random items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError, UnknownItemError
from recsieve.rerankers.training import (
    Example,
    Step,
    TrainReport,
    build_examples,
    make_render,
    train_reranker,
)
from recsieve.types import EVENT_KINDS, Event

__all__ = ["engine_sequences", "engine_examples", "train_engine_reranker"]


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
