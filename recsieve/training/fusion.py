"""The behaviour index's fusion weight, chosen on held-out steps (not on any evaluation user).

Recall fuses its channels by weighted reciprocal rank (:func:`~recsieve.engine.recall.fuse`).
A trained context encoder's channel is usually the strongest of them, but how much stronger
depends on the data, so :func:`tune_context_weight` measures it: on a seeded sample of users'
held-out steps (targets the encoder never trained on), with statistics that leave each user
out as the head's examples do, it runs recall once per step, keeps every channel's own list,
and re-fuses them with each weight of a grid. The weight whose fused top ``n`` holds the most
targets (ties: the higher mean reciprocal rank of the target, then the smaller weight) is
saved with the model (``settings.extra["recall_weight"]``), where serving reads it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from recsieve.engine.engine import Engine
from recsieve.engine.models import ServingModel
from recsieve.engine.recall import fuse
from recsieve.rerankers.training import Step
from recsieve.training.batched_examples import recall_chunks, supported
from recsieve.training.examples import last_positives, observe_all, observe_steps, sample_users
from recsieve.types import Candidates

__all__ = ["WEIGHT_GRID", "tune_context_weight"]

#: Weights tried, relative to the other channels' (transitions 1, vector 1, popularity 0.3 by default).
WEIGHT_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def tune_context_weight(
    engine: Engine,
    sequences: dict[str, list[Step]],
    model: ServingModel,
    *,
    steps_per_user: int = 1,
    users: int = 400,
    grid: Sequence[float] = WEIGHT_GRID,
    seed: int = 0,
    batch: bool = True,
    among: Collection[str] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """The fusion weight for ``model``'s context channel (see the module docstring) and, per
    weight, the recall coverage and mean reciprocal rank it gave. ``steps_per_user``: each
    sampled user's last positive steps used as targets. ``batch``: recall in chunks of users
    (:func:`~recsieve.training.batched_examples.recall_chunks`, the same lists), else one
    request at a time. ``among``: sample only these users (those whose steps the encoder never
    trained on)."""
    if model.context is None:
        raise ValueError("the model has no context encoder to weigh")
    ids = sample_users([u for u, s in sequences.items() if (among is None or u in among)
                        and last_positives(s, steps_per_user)], users, seed)
    channels = engine.new_statistics()
    n = engine.config.recall_n
    found = np.zeros(len(grid))
    rr = np.zeros(len(grid))
    tried = 0

    def count(lists: Sequence[Any], weights: Sequence[float], target: int) -> None:
        for g, w in enumerate(grid):
            rows = fuse(lists, [*weights, float(w)], n).rows
            hit = np.flatnonzero(rows == target)
            if hit.size:
                found[g] += 1
                rr[g] += 1.0 / (1 + int(hit[0]))

    if batch and supported(channels):
        observe_all(engine, channels, sequences)
        targets = {u: last_positives(sequences[u], steps_per_user) for u in ids}
        base = list(engine.config.channel_weights)[: len(channels)]
        for _plan, req, rec in recall_chunks(engine, sequences, targets, channels, model=model):
            for g, i in enumerate(rec.index.tolist()):
                lists = [Candidates(*lst.get(g)) for lst in rec.lists]
                tried += 1
                count(lists, base, int(req.steps[req.users[i]].rows[req.targets[i]]))
        return _choice(grid, found, rr, tried)
    for u in sorted(sequences):
        observe_steps(engine, channels, sequences[u])
    for u in ids:
        seq = sequences[u]
        observe_steps(engine, channels, seq, forget=True)
        try:
            for t in last_positives(seq, steps_per_user):
                history = seq[:t]
                view = engine.history_view([s.item for s in history], [s.kind for s in history],
                                           [s.ts if s.ts is not None else float(i) for i, s in enumerate(history)])
                now = seq[t].ts if seq[t].ts is not None else float(t)
                recalled = engine.recall_stage(view, statistics=channels, now=now, model=model)
                tried += 1
                count(recalled.lists, list(engine.config.channel_weights)[: len(recalled.lists) - 1], seq[t].item)
        finally:
            observe_steps(engine, channels, seq)
    return _choice(grid, found, rr, tried)


def _choice(grid: Sequence[float], found: np.ndarray, rr: np.ndarray,
            tried: int) -> tuple[float, list[dict[str, Any]]]:
    table = [{"weight": float(w), "coverage": found[g] / max(tried, 1), "mrr": rr[g] / max(tried, 1)}
             for g, w in enumerate(grid)]
    best = max(range(len(grid)), key=lambda g: (found[g], rr[g], -grid[g]))
    return float(grid[best]), table
