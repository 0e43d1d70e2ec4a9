"""``recsieve train``: the context model, then the ranking head that stacks it — one model folder.

The users whose steps become examples for the later stages (a seeded sample of ``users``,
:func:`~recsieve.training.examples.sample_users`) are chosen first.

1. **Item tower + context encoder** (:func:`~recsieve.training.context_model.fit_context_model`):
   next-item cross-entropy over the catalog's item tokens on every user's positive steps --
   for the sampled users only those *before* the steps the scorer and the head learn from, so
   both later read the encoder's scores on targets it never trained on (no label leaks into a
   stacked feature), while every other user's steps all train it (on sparse logs, where most
   users have a handful of steps, holding out everyone's last ones left most users out).
2. **Candidate scorer** (the fine sieve's cross-encoder,
   :func:`~recsieve.training.scorer.fit_candidate_scorer`): listwise over candidates
   on the sampled users' ``scorer_steps`` steps after the encoder's (held out from it) -- the
   encoder's own top ``recall_n`` (the behaviour index's channel is the largest share of
   recall), where the target is among them.
3. **Item co-occurrence** (:class:`~recsieve.context.cooccurrence.CoOccurrence`): items a few
   steps apart in the encoder's sequences (so without the held-out steps), saved with the model.
4. **Ranking head** (:func:`~recsieve.training.head.train_engine_ranker` with ``context=``):
   recall now runs with the new behaviour index; the head stacks the encoder's and the
   scorer's scores and the co-occurrence score with every recall feature on the sampled users' last ``steps_per_user`` steps
   (its fusion-weight tuning and pseudo-cold examples also draw from them).
5. **Refit** (:func:`refit_encoder`, ``refit_epochs``): the encoder goes on a few epochs on
   every user's whole sequence, the held-out steps included, as stacking refits its base models
   on all the data once the meta-model has read their out-of-sample scores; on sparse logs the
   held-out steps are a large share of the positions (~19% on Amazon Scientific, where ~1,500 of
   8,442 users had none left for the first training). It validates before its first epoch and
   after each on the first training's held-out users, each on its newest step (never trained on
   by either), and keeps its weights unless an epoch validates higher.

The folder is assembled next to ``out`` and renamed into place when complete; the engine then
switches to it atomically (the old model serves until the new behaviour index is built).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.context.cooccurrence import CoOccurrence
from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError
from recsieve.indexes.checks import check_positive
from recsieve.rerankers.training import Step
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.examples import engine_sequences, last_positives, sample_users
from recsieve.training.head import train_engine_ranker
from recsieve.training.scorer import fit_candidate_scorer
from recsieve.training.validation import validation_rows
from recsieve.types import EVENT_KINDS, Event

__all__ = ["COLD_SHARE", "CONTEXT_DIM", "REFIT_BUDGET_SHARE", "REFIT_EPOCHS", "REFIT_LR", "SCORER_STEPS", "train_engine", "refit_encoder", "encoder_sequences", "held_out_steps", "scorer_examples"]

#: The default share of items made pseudo-cold for the head's cold examples (:mod:`recsieve.training.cold`);
#: 0: none (what they buy on ML-1M: bench/new_item_slots.py --cold-share).
COLD_SHARE = 0.0

#: The default count of each example user's held-out steps the candidate scorer learns from
#: (taken just before the head's). 4 (with 4,000 example users) was tried and not kept: on one
#: ML-1M encoder it made the scorer alone worth more (bench/results/scorer_data_ml1m.json), but
#: end to end neither ML-1M nor Amazon Scientific gained (README, "Tried and not kept").
SCORER_STEPS = 2
#: After the head is fitted, the encoder goes on up to this many epochs on every user's whole
#: sequence (the steps held out for the scorer and the head included) at the constant rate
#: :data:`REFIT_LR`, validated first and after each epoch on the first training's held-out users
#: (their newest step, which neither training sees), stopping after :data:`REFIT_PATIENCE`
#: epochs without a better score: it keeps the best, its given weights unless an epoch validates
#: higher (without held-out users, its last epoch). 0: no refit.
REFIT_EPOCHS = 5
REFIT_LR = 5e-4
REFIT_PATIENCE = 2
#: The refit's time, as a share of the encoder's budget (``train_engine(budget_s=...)``): it stops
#: there, mid-epoch if need be, and validates what it has. On the README's datasets five epochs
#: take less (ML-1M's ~40 s epochs: ~200 s of a 1,200 s budget's 300), so it never binds there;
#: it bounds a large catalog, where an epoch can take minutes (a 26,000-item, 87,000-user set:
#: ~300 s on two AVX2 cores).
REFIT_BUDGET_SHARE = 0.25
#: The context model's token and hidden size. 64 is SASRec's published recipe; at the same
#: 1,200 s encoder budget 128 trains fewer, slower epochs and ends higher on ML-1M
#: (bench/results/encoder_size_ml1m.json, README "Recommendation quality").
CONTEXT_DIM = 128


def encoder_sequences(sequences: dict[str, list[Step]], held_out: int,
                      among: Collection[str] | None = None) -> list[np.ndarray]:
    """Each user's positive steps (catalog rows), before its last ``held_out`` positive steps
    for the users ``among`` (default: every user); users with fewer than 2 such steps left out."""
    return list(_encoder_rows(sequences, held_out, among).values())


def _encoder_rows(sequences: dict[str, list[Step]], held_out: int,
                  among: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """:func:`encoder_sequences` by user id (sorted)."""
    out = {}
    for u in sorted(sequences):
        seq = sequences[u]
        targets = last_positives(seq, held_out) if held_out > 0 and (among is None or u in among) else []
        cut = targets[0] if targets else len(seq)
        rows = [s.item for s in seq[:cut] if EVENT_KINDS.get(s.kind, 1.0) > 0]
        if len(rows) >= 2:
            out[u] = np.asarray(rows, np.int64)
    return out


def held_out_steps(sequences: dict[str, list[Step]], skip_last: int, take: int,
                   among: Collection[str] | None = None) -> tuple[list[np.ndarray], list[int]]:
    """(contexts, targets) of each user's (``among``'s, default every user's) ``take`` positive
    steps just before its last ``skip_last`` ones: context = the positive rows before the step,
    target = its row."""
    contexts, targets = [], []
    for u in sorted(sequences if among is None else set(sequences) & set(among)):
        seq = sequences[u]
        steps = last_positives(seq, skip_last + take)
        for t in steps[: max(0, len(steps) - skip_last)]:  # a short sequence's last steps stay the head's
            rows = [s.item for s in seq[:t] if EVENT_KINDS.get(s.kind, 1.0) > 0]
            if rows:
                contexts.append(np.asarray(rows, np.int64))
                targets.append(seq[t].item)
    return contexts, targets


def refit_encoder(model: Any, sequences: dict[str, list[Step]], first: dict[str, np.ndarray], config: TrainConfig,
                  text_vectors: np.ndarray | None, *, epochs: int = REFIT_EPOCHS,
                  lr: float = REFIT_LR, budget_s: float | None = None) -> dict[str, Any]:
    """Continue training ``model`` (trained with ``config`` on ``first``: user -> rows) in place on
    every user's whole positive sequence for ``epochs`` epochs at the constant rate ``lr``. Its
    held-out users are those the first training validated on (:func:`validation_rows` of
    ``first``), each now on its newest step -- one the first training never saw either (it
    held out that user's last step, or its whole held-out tail) -- and the model is validated
    before the first epoch too, so it changes only where an epoch validates higher; it stops after
    :data:`REFIT_PATIENCE` epochs without a better score, or once it has trained ``budget_s``
    seconds (``None``: no limit). Returns the refit's history."""
    whole = _encoder_rows(sequences, 0)
    index = {u: i for i, u in enumerate(whole)}
    first_users = list(first)
    valid = [index[first_users[i]] for i in validation_rows(list(first.values()), config)]
    cfg = replace(config, epochs=epochs, lr=lr, schedule="constant", warmup=0.0, budget_s=budget_s,
                  patience=REFIT_PATIENCE, plateau=None, name="refit")
    _, hist = fit_context_model(list(whole.values()), model.settings.n_warm, text_vectors, config=cfg, model=model,
                                valid=valid)
    return {k: v for k, v in hist.items() if k != "valid_curve"}


def scorer_examples(model: Any, contexts: Sequence[np.ndarray], targets: Sequence[int], n: int, *,
                    batch: int = 256) -> tuple[list[np.ndarray], list[np.ndarray], list[int], float]:
    """Examples for the candidate scorer: the encoder's top ``n`` unseen items for each context,
    kept where the target is among them. Returns (contexts, candidates, target positions, the
    encoder's recall@n over all the contexts given).

    A target the encoder missed is *not* put among the candidates: the scorer reads the
    encoder's score of each candidate, and an inserted target (scored far below the other
    candidates) teaches it that a very low score marks the answer -- measured on ML-1M, that
    cost 0.027 NDCG@10 against the encoder's own order."""
    kept_ctx, candidates, tix, hits = [], [], [], 0
    for lo in range(0, len(contexts), batch):
        chunk = contexts[lo : lo + batch]
        scores = model.score_items(chunk)
        for ctx, target, row_scores in zip(chunk, targets[lo : lo + batch], scores):
            row_scores[ctx] = -np.inf  # consumed items are never recalled
            m = min(n, len(row_scores) - 1)
            top = np.argpartition(-row_scores, m)[:m] if m < len(row_scores) else np.arange(len(row_scores))
            top = top[np.argsort(-row_scores[top], kind="stable")].astype(np.int64)
            hit = np.flatnonzero(top == target)
            if hit.size:
                hits += 1
                kept_ctx.append(ctx)
                candidates.append(top)
                tix.append(int(hit[0]))
    return kept_ctx, candidates, tix, hits / max(len(contexts), 1)


def train_engine(
    engine: Engine,
    out: str | Path | None = None,
    events: Sequence[Event] | None = None,
    *,
    steps_per_user: int = 3,
    users: int | None = 4000,
    epochs: int = 200,
    budget_s: float | None = 1200.0,
    scorer_steps: int = SCORER_STEPS,
    scorer_epochs: int = 2,
    scorer_budget_s: float | None = 300.0,
    cross_encoder: bool = True,
    dim: int = CONTEXT_DIM,
    max_len: int = 200,
    encoder: TrainConfig | None = None,
    ablation_out: str | Path | None = None,
    refit_epochs: int = REFIT_EPOCHS,
    refit_lr: float = REFIT_LR,
    refit_ablation_out: str | Path | None = None,
    cold_share: float = COLD_SHARE,
    seed: int = 0,
    progress: bool = True,
    switch: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Train the context model and the ranking head on the engine's log into one model folder
    ``out`` (default ``DIR/models/model-<journal seq>``) and, with ``switch``, serve it from now
    on (written to the engine's config, atomically). ``budget_s`` / ``scorer_budget_s`` bound the
    encoder's and the scorer's training time; ``cross_encoder=False`` trains no candidate scorer
    (the ablation: its feature is then constant and carries no weight). ``encoder``: every
    setting of the encoder's training (then ``epochs``, ``budget_s`` and ``seed`` are its own;
    its ``exclude_seen`` holds only where the engine's ``exclude_consumed`` does).
    ``ablation_out``: also write there the head trained on the same examples without the
    candidate scorer's score (the ablation; the report pairs both on held-out users).
    ``refit_epochs`` / ``refit_lr``: once the head is fitted, the encoder continues on every
    user's whole sequence (:func:`refit_encoder`; 0: no refit) for at most
    :data:`REFIT_BUDGET_SHARE` of the encoder's budget; ``refit_ablation_out``: also
    write there the head with the encoder it was trained with, before its refit (the ablation).
    ``cold_share``: the head also learns from pseudo-cold examples, a world where that share of
    the items has no behaviour and no ID residual (:mod:`recsieve.training.cold`; 0: none).
    ``workers``: train the encoder data-parallel on that many Ray Train workers
    (:func:`~recsieve.training.ray_train.fit_context_model_on_ray`, needs ``recsieve[ray]``) on the
    cluster at ``ray_address`` (``None``: a local Ray); the rest trains here. Returns the report.
    """
    t0 = time.perf_counter()
    check_positive("workers", workers, allow_none=True)
    if isinstance(refit_epochs, bool) or not isinstance(refit_epochs, int) or refit_epochs < 0:
        raise InvalidInputError("refit_epochs", refit_epochs, "must be a non-negative integer (0: no refit)")
    if not refit_lr > 0:
        raise InvalidInputError("refit_lr", refit_lr, "must be positive")
    if refit_ablation_out is not None and not refit_epochs:
        raise InvalidInputError("refit_ablation_out", str(refit_ablation_out), "needs a refit (refit_epochs > 0)")
    if ray_address is not None and workers is None:
        raise InvalidInputError("ray_address", ray_address, "give workers too: the encoder trains on Ray with them")
    if not engine.catalog.num_rows:
        raise InvalidInputError("catalog", 0, "no items to train on")
    out_path = Path(out) if out is not None else engine.directory / "models" / f"model-{engine.applied_seq}"
    if out_path.exists() and not overwrite:
        raise InvalidInputError("out", str(out_path), "already exists; pass overwrite=True to replace it")
    sequences = engine_sequences(engine, events)
    scorer_steps = scorer_steps if cross_encoder else 0
    examples_from = set(sample_users([u for u, s in sequences.items() if last_positives(s, steps_per_user)],
                                     users, seed))
    first = _encoder_rows(sequences, steps_per_user + scorer_steps, examples_from)
    train_rows = list(first.values())
    if len(train_rows) < 2:
        raise InvalidInputError("events", len(sequences), "too few users with 2+ steps before their held-out steps")
    from recsieve.context.model import ContextSettings

    settings = ContextSettings(n_warm=engine.catalog.num_rows, text_dim=engine.dim, dim=dim, max_len=max_len)
    config = encoder or TrainConfig(epochs=epochs, budget_s=budget_s, seed=seed, progress=progress)
    # seen items leave the softmax only where serving never ranks them
    config = replace(config, exclude_seen=config.exclude_seen and engine.config.exclude_consumed)
    if workers is None:
        model, history = fit_context_model(train_rows, engine.catalog.num_rows, engine.text_vectors(),
                                           settings=settings, config=config)
    else:
        from recsieve.training.ray_train import fit_context_model_on_ray

        model, history = fit_context_model_on_ray(train_rows, engine.catalog.num_rows, engine.text_vectors(),
                                                  settings=settings, config=config, workers=workers,
                                                  address=ray_address)
    # the head's co-occurrence feature, counted on the encoder's sequences (held-out steps left out)
    model.cooccurrence = CoOccurrence.fit(train_rows, engine.catalog.num_rows)
    report: dict[str, Any] = {"encoder": {k: v for k, v in history.items() if k != "valid_curve"},
                              "encoder_users": len(train_rows), "example_users": len(examples_from),
                              "cooccurrence_pairs": int(len(model.cooccurrence.data))}
    if cross_encoder:
        ctx, targets = held_out_steps(sequences, steps_per_user, scorer_steps, examples_from)
        ctx, cands, tix, recall = scorer_examples(model, ctx, targets, engine.config.recall_n)
        report["scorer_examples"] = len(ctx)
        report["scorer_encoder_recall"] = round(recall, 4)
        if ctx:
            report["scorer"] = fit_candidate_scorer(model, ctx, cands, tix, epochs=scorer_epochs,
                                                    budget_s=scorer_budget_s, seed=seed, progress=progress)
    ablate = None if ablation_out is None else ("context.context_cross", ablation_out)
    refit = None
    if refit_epochs:
        def refit() -> dict[str, Any]:
            return refit_encoder(model, sequences, first, config, engine.text_vectors(), epochs=refit_epochs,
                                 lr=refit_lr, budget_s=config.budget_s and config.budget_s * REFIT_BUDGET_SHARE)
    head = train_engine_ranker(engine, out_path, events, users=users, steps_per_user=steps_per_user, context=model,
                               ablate=ablate, cold_share=cold_share, among=examples_from, refit=refit,
                               refit_ablation=refit_ablation_out, seed=seed, progress=progress, overwrite=overwrite)
    report["head"] = {k: v for k, v in head.items() if not isinstance(v, (list, dict))}
    for key in ("fusion", "pseudo_cold", "refit"):
        if key in head:
            report[key] = head[key]
    if "ablation" in head:
        report["ablation"] = head["ablation"]
    report["model"] = str(out_path)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if switch:
        engine.use_model(out_path, persist=True)
    return report
