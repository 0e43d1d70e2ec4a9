"""``recsieve train``: the context model, then the ranking head that stacks it — one model folder.

1. **Item tower + context encoder** (:func:`~recsieve.training.context_model.fit_context_model`):
   next-item cross-entropy over the catalog's item tokens on every user's positive steps
   *before* the steps the head will learn from, so the head later reads the encoder's scores
   on targets the encoder never trained on (no label leaks into a stacked feature).
2. **Candidate scorer** (the fine sieve's cross-encoder,
   :func:`~recsieve.training.context_model.fit_candidate_scorer`): listwise over candidates
   for each user's last such step — the encoder's own top ``recall_n`` (the behaviour index's
   channel is the largest share of recall), the target among them.
3. **Ranking head** (:func:`~recsieve.training.head.train_engine_ranker` with ``context=``):
   recall now runs with the new behaviour index; the head stacks the encoder's and the
   scorer's scores with every recall feature on each user's last ``steps_per_user`` steps.

The folder is assembled next to ``out`` and renamed into place when complete; the engine then
switches to it atomically (the old model serves until the new behaviour index is built).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError
from recsieve.rerankers.training import Step
from recsieve.training.context_model import TrainConfig, fit_candidate_scorer, fit_context_model
from recsieve.training.examples import engine_sequences, last_positives
from recsieve.training.head import train_engine_ranker
from recsieve.types import EVENT_KINDS, Event

__all__ = ["train_engine", "encoder_sequences", "scorer_examples"]


def encoder_sequences(sequences: dict[str, list[Step]], held_out: int) -> list[np.ndarray]:
    """Each user's positive steps (catalog rows) before its last ``held_out`` positive steps."""
    out = []
    for u in sorted(sequences):
        seq = sequences[u]
        targets = last_positives(seq, held_out)
        cut = targets[0] if targets else len(seq)
        rows = [s.item for s in seq[:cut] if EVENT_KINDS.get(s.kind, 1.0) > 0]
        if len(rows) >= 2:
            out.append(np.asarray(rows, np.int64))
    return out


def scorer_examples(model: Any, sequences: Sequence[np.ndarray], n: int, *, users: int | None = None,
                    seed: int = 0, batch: int = 256) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(contexts, candidates, target positions) for the candidate scorer: each sequence's last
    step as the target, its earlier steps as the context, the encoder's top ``n`` unseen items as
    candidates; sequences whose target is not among them give no example."""
    rng = np.random.default_rng(seed)
    picked = list(range(len(sequences)))
    if users is not None and users < len(picked):
        picked = sorted(rng.choice(len(picked), size=users, replace=False).tolist())
    contexts, candidates, targets = [], [], []
    for lo in range(0, len(picked), batch):
        chunk = [sequences[i] for i in picked[lo : lo + batch]]
        scores = model.score_items([s[:-1] for s in chunk])
        for s, row_scores in zip(chunk, scores):
            row_scores[s[:-1]] = -np.inf  # consumed items are never recalled
            top = np.argpartition(-row_scores, min(n, len(row_scores) - 1))[:n]
            top = top[np.argsort(-row_scores[top], kind="stable")]
            hit = np.flatnonzero(top == s[-1])
            if hit.size:
                contexts.append(s[:-1])
                candidates.append(top.astype(np.int64))
                targets.append(int(hit[0]))
    return contexts, candidates, targets


def train_engine(
    engine: Engine,
    out: str | Path | None = None,
    events: Sequence[Event] | None = None,
    *,
    steps_per_user: int = 3,
    users: int | None = 4000,
    epochs: int = 200,
    budget_s: float | None = 1200.0,
    scorer_users: int | None = 2000,
    scorer_epochs: int = 2,
    scorer_budget_s: float | None = 300.0,
    cross_encoder: bool = True,
    dim: int = 64,
    max_len: int = 200,
    encoder: TrainConfig | None = None,
    ablation_out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    switch: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the context model and the ranking head on the engine's log into one model folder
    ``out`` (default ``DIR/models/model-<journal seq>``) and, with ``switch``, serve it from now
    on (written to the engine's config, atomically). ``budget_s`` / ``scorer_budget_s`` bound the
    encoder's and the scorer's training time; ``cross_encoder=False`` trains no candidate scorer
    (the ablation: its feature is then constant and carries no weight). ``encoder``: every
    setting of the encoder's training (then ``epochs``, ``budget_s`` and ``seed`` are its own).
    ``ablation_out``: also write there the head trained on the same examples without the
    candidate scorer's score (the ablation; the report pairs both on held-out users).
    Returns the report.
    """
    t0 = time.perf_counter()
    if not engine.catalog.num_rows:
        raise InvalidInputError("catalog", 0, "no items to train on")
    out_path = Path(out) if out is not None else engine.directory / "models" / f"model-{engine.applied_seq}"
    if out_path.exists() and not overwrite:
        raise InvalidInputError("out", str(out_path), "already exists; pass overwrite=True to replace it")
    sequences = engine_sequences(engine, events)
    train_rows = encoder_sequences(sequences, steps_per_user)
    if len(train_rows) < 2:
        raise InvalidInputError("events", len(sequences), "too few users with 2+ steps before their held-out steps")
    from recsieve.context.model import ContextSettings

    settings = ContextSettings(n_warm=engine.catalog.num_rows, text_dim=engine.dim, dim=dim, max_len=max_len)
    config = encoder or TrainConfig(epochs=epochs, budget_s=budget_s, seed=seed, progress=progress)
    model, history = fit_context_model(train_rows, engine.catalog.num_rows, engine.text_vectors(),
                                       settings=settings, config=config)
    report: dict[str, Any] = {"encoder": {k: v for k, v in history.items() if k != "valid_curve"},
                              "encoder_users": len(train_rows)}
    if cross_encoder:
        ctx, cands, tix = scorer_examples(model, train_rows, engine.config.recall_n, users=scorer_users, seed=seed)
        report["scorer_examples"] = len(ctx)
        if ctx:
            report["scorer"] = fit_candidate_scorer(model, ctx, cands, tix, epochs=scorer_epochs,
                                                    budget_s=scorer_budget_s, seed=seed, progress=progress)
    ablate = None if ablation_out is None else ("context.context_cross", ablation_out)
    head = train_engine_ranker(engine, out_path, events, users=users, steps_per_user=steps_per_user, context=model,
                               ablate=ablate, seed=seed, progress=progress, overwrite=overwrite)
    report["head"] = {k: v for k, v in head.items() if not isinstance(v, (list, dict))}
    if "ablation" in head:
        report["ablation"] = head["ablation"]
    report["model"] = str(out_path)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if switch:
        engine.use_model(out_path, persist=True)
    return report
