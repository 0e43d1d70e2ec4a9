"""One context-model / SASRec experiment on ML-1M (or another dataset ``recsieve evaluate``
reads: ``--dataset``; leave-one-out, full ranking, history excluded).

python bench/context_experiment.py --system context|sasrec --budget 600 [--dataset ml-1m --data DIR]
  [--users 1000] [--ids-only]
  [--fp32] [--sampled] [--epochs N] [--lr 1e-3] [--stage test|valid]
  [--attention-dropout P] [--batching random|length|bucket] [--dim D] [--heads H] [--blocks B] [--per-user FILE.npy] [--pair-with OTHER.npy]
  [--hold-out-users N --hold-out-steps K]
Prints a JSON line with the figures. Text vectors: MiniLM of the item texts, cached at --text-cache.
``--per-user`` saves the per-user NDCG@10; ``--pair-with`` adds this run's paired difference
from such a file (same users) with a 95% bootstrap interval -- two runs side by side, one
thread each, compare two settings at equal budgets. ``--hold-out-users N --hold-out-steps K``:
a seeded sample of N users trains without its last K training items, as ``recsieve train`` holds
the head's and the candidate scorer's steps (3 + 2 of 2,000 users in ``recsieve evaluate``) out of
the encoder; every user is still evaluated on its whole context.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
from ensemble_experiment import ScoreSum  # bench/ is the script's folder: a fixed model as a scorer

from recsieve.context import ContextSettings
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.harness import PER_USER, evaluate_split
from recsieve.evaluation.protocol import leave_one_out
from recsieve.intervals import paired_gain
from recsieve.training.batches import BATCHING
from recsieve.training.context_model import ContextScorer, TrainConfig, fit_context_model


def text_vectors(data, cache: str) -> np.ndarray:
    if os.path.exists(cache):
        return np.load(cache)
    from recsieve.embedding import SentenceTransformerEmbedder

    v = SentenceTransformerEmbedder().embed(list(data.item_texts))
    os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
    np.save(cache, v)
    return v


class HoldingOut:
    """A scorer that trains ``inner`` (a ContextScorer) with the last ``steps`` items of ``users``
    sampled users left out, then continues it ``refit_epochs`` epochs on every user's whole
    training sequence at a constant rate (``refit_lr``, default the first training's last rate),
    without validation."""

    def __init__(self, inner, users: int, steps: int, seed: int, refit_epochs: int = 0,
                 refit_lr: float | None = None) -> None:
        self.inner, self.users, self.steps, self.seed = inner, users, steps, seed
        self.refit_epochs, self.refit_lr = refit_epochs, refit_lr

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def fit(self, train_sequences, n_items: int) -> None:
        seqs = list(train_sequences)
        pick = np.random.default_rng(self.seed).choice(len(seqs), size=min(self.users, len(seqs)), replace=False)
        for u in pick:
            seqs[u] = seqs[u][: max(len(seqs[u]) - self.steps, 0)]
        self.inner.fit(seqs, n_items)
        if self.refit_epochs:
            self.before = ScoreSum([copy.deepcopy(self.inner.model)], "before-refit")  # evaluated too: the refit's paired gain
            lr = self.refit_lr or self.inner.history["lr"][-1]
            cfg = replace(self.inner.config, epochs=self.refit_epochs, lr=lr, schedule="constant", warmup=0.0,
                          budget_s=None, valid_users=0, patience=None, plateau=None)
            _, hist = fit_context_model(train_sequences, n_items, self.inner.text_vectors, model=self.inner.model,
                                        config=cfg)
            self.inner.history = {**self.inner.history, "refit": {k: v for k, v in hist.items() if k != "valid_curve"}}

    def score(self, contexts):
        return self.inner.score(contexts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", default="context")
    ap.add_argument("--dataset", default="ml-1m", help="dataset name as recsieve evaluate takes it")
    ap.add_argument("--data", default="../shared/data/ml-1m", help="its folder")
    ap.add_argument("--text-cache", default="bench/.cache/ml1m_text.npy")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--budget", type=float, default=600)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default: TrainConfig.lr; SASRec's own 1e-3 for --system sasrec)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batching", default=TrainConfig.batching, choices=BATCHING,
                    help="TrainConfig.batching (default %(default)s)")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--schedule", default=None)
    ap.add_argument("--ids-only", action="store_true")
    ap.add_argument("--no-ids", action="store_true")
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--sampled", action="store_true")
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--patience", type=int, default=8,
                    help="epochs without a better validation NDCG@10 before stopping; 0: none, train to the budget")
    ap.add_argument("--plateau", type=int, default=None,
                    help="epochs without a better validation NDCG@10 before the best weights come back and "
                         "the rate is cut (TrainConfig.plateau; default: no cuts)")
    ap.add_argument("--cut-factor", type=float, default=TrainConfig.cut_factor,
                    help="the rate's factor at each cut (default %(default)s)")
    ap.add_argument("--cuts", type=int, default=TrainConfig.cuts, help="the most cuts (default %(default)s)")
    ap.add_argument("--stage", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None)
    ap.add_argument("--attention-dropout", type=float, default=ContextSettings.attention_dropout,
                    help="dropout on the attention weights (context system; default %(default)s)")
    ap.add_argument("--valid-users", type=int, default=TrainConfig.valid_users,
                    help="held-out users for early stopping, at most a fifth of the users (default %(default)s)")
    ap.add_argument("--id-dropout", type=float, default=TrainConfig.id_dropout,
                    help="share of items whose ID residual each batch drops (TrainConfig.id_dropout; default %(default)s)")
    ap.add_argument("--dim", type=int, default=ContextSettings.dim, help="token width (default %(default)s)")
    ap.add_argument("--heads", type=int, default=ContextSettings.heads, help="attention heads (default %(default)s)")
    ap.add_argument("--blocks", type=int, default=ContextSettings.blocks, help="transformer blocks (default %(default)s)")
    ap.add_argument("--hold-out-users", type=int, default=0,
                    help="train without the last --hold-out-steps items of this many sampled users (default none)")
    ap.add_argument("--hold-out-steps", type=int, default=5, help="items held out per such user (default %(default)s)")
    ap.add_argument("--refit-epochs", type=int, default=0,
                    help="with --hold-out-users: then continue the encoder this many epochs on every user's whole "
                         "training sequence, at a constant --refit-lr, without validation (default 0: no refit)")
    ap.add_argument("--refit-lr", type=float, default=None,
                    help="the refit's rate (default: the first training's last rate)")
    ap.add_argument("--exclude-seen", action="store_true",
                    help="leave each user's earlier items out of every position's full softmax "
                         "(TrainConfig.exclude_seen: on by default in the library, off here unless given, so "
                         "the commands recorded before it reproduce)")
    ap.add_argument("--per-user", default=None, help="save the per-user NDCG@10 here (.npy)")
    ap.add_argument("--pair-with", default=None, help="a --per-user file of another run on the same users")
    a = ap.parse_args()
    patience = a.patience or None
    lr = {} if a.lr is None else {"lr": a.lr}  # unset: each trainer's own default
    torch.set_num_threads(a.threads)
    data = load_dataset(a.dataset, a.data)
    split = leave_one_out(data, users=a.users, seed=a.seed)
    cfg = TrainConfig(
        epochs=a.epochs, budget_s=a.budget, **lr, batch_size=a.batch, batching=a.batching, bf16=not a.fp32,
        sampled_above=1 if a.sampled else 50_000, n_negatives=a.negatives, patience=patience,
        valid_users=a.valid_users, id_dropout=a.id_dropout, plateau=a.plateau, cut_factor=a.cut_factor, cuts=a.cuts,
        weight_decay=a.wd, schedule=a.schedule or "cosine", seed=a.seed, threads=a.threads, progress=True,
        exclude_seen=a.exclude_seen,
    )
    if a.system == "sasrec":
        from recsieve.evaluation.sasrec import SASRec

        system = SASRec(seed=a.seed, budget_s=a.budget, epochs=a.epochs, **lr, dropout=a.dropout,
                        bf16=not a.fp32, threads=a.threads, schedule=a.schedule or "constant", valid_users=a.valid_users, patience=patience, progress=True)
    else:
        tv = None if a.ids_only else text_vectors(data, a.text_cache)
        settings = ContextSettings(n_warm=data.n_items if hasattr(data, "n_items") else len(data.items),
                                   text_dim=0 if a.ids_only else 384, dropout=a.dropout, use_ids=not a.no_ids,
                                   attention_dropout=a.attention_dropout, dim=a.dim, heads=a.heads,
                                   blocks=a.blocks)
        system = ContextScorer(tv, settings=settings, config=cfg)
    if a.hold_out_users:
        system = HoldingOut(system, a.hold_out_users, a.hold_out_steps, a.seed, a.refit_epochs, a.refit_lr)
    t = time.time()
    row = evaluate_split(split, system, stage=a.stage, progress=False, per_user=True)
    ndcg = row.pop(PER_USER)["ndcg@10"]
    if a.per_user:
        np.save(a.per_user, ndcg)
    before = getattr(system, "before", None)
    if before is not None:  # the same split, the encoder before its refit
        prior = evaluate_split(split, before, stage=a.stage, progress=False, per_user=True)
        row["before_refit"] = {k: prior[k] for k in ("ndcg@10", "hr@10")}
        row["refit_minus_before"] = paired_gain(list(ndcg), list(prior.pop(PER_USER)["ndcg@10"]))
    if a.pair_with:
        row["minus_pair_with"] = paired_gain(list(ndcg), list(np.load(a.pair_with)))
    hist = {k: v for k, v in system.history.items() if k != "losses"}
    out = {"args": vars(a), "users": split.n_users, "row": row, "history": hist,
           "losses": [round(x, 4) for x in system.history.get("losses", [])], "wall_s": round(time.time() - t, 1)}
    print(json.dumps(out))
    if a.save and a.system == "context":
        system.model.save(a.save)


if __name__ == "__main__":
    main()
