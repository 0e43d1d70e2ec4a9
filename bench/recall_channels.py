"""Could another recall channel lift recall coverage@200? The context encoder's own top items
against the co-occurrence channel (item-kNN) and their fusions, on a saved context model.

python bench/recall_channels.py --model DIR --dataset ml-1m --data ../shared/data/ml-1m [--json FILE]

``DIR`` is a context-model folder trained on the dataset's leave-one-out training parts (e.g.
``state/model/context`` in a ``recsieve evaluate --cache-dir`` entry of ``recsieve``). Every
user's test item is ranked among all items, history excluded, ties counted as the expected rank
(:func:`recsieve.evaluation.metrics.rank_metrics`), by: the encoder's score (the behaviour
index's query), the co-occurrence score the head reads (the model's own
:class:`~recsieve.context.cooccurrence.CoOccurrence`, every item scored), and fusions of the two
-- z-scored sums at a grid of weights and reciprocal-rank fusion. The grid is read on the test
items themselves, so the best fusion is an optimistic bound on what the channel could add, not a
setting. Reports recall@100/200/400, NDCG@10 and each fusion's paired recall@200 difference from
the encoder alone (95% bootstrap interval); prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from recsieve.context import ContextModel
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.metrics import history_mask, rank_metrics
from recsieve.evaluation.protocol import leave_one_out
from recsieve.intervals import paired_gain

WEIGHTS = (0.05, 0.1, 0.2, 0.5)
RRF_WEIGHTS = (0.25, 0.5, 1.0)
RRF_K = 60


def cooccurrence_scores(model: ContextModel, contexts: list[np.ndarray], n_items: int) -> np.ndarray:
    """Every item's co-occurrence score for each context, as the head reads it
    (``CoOccurrence.scores_many`` with every item a candidate)."""
    every = np.tile(np.arange(n_items), len(contexts))
    return model.cooccurrence.scores_many(contexts, every, np.arange(len(contexts) + 1) * n_items).reshape(
        len(contexts), n_items)


def zscore(scores: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Each row standardised over the items it may rank (history excluded)."""
    masked = np.where(hidden, np.nan, scores.astype(np.float64))
    mean, std = np.nanmean(masked, 1, keepdims=True), np.nanstd(masked, 1, keepdims=True)
    return np.nan_to_num((masked - mean) / (std + 1e-9), nan=-np.inf)


def ranks(scores: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """0-based rank of each item in its row (history last)."""
    order = np.argsort(-np.where(hidden, -np.inf, scores), axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(scores.shape[1])[None, :], axis=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a saved context-model folder (with its co-occurrence counts)")
    ap.add_argument("--dataset", default="ml-1m", help="dataset name for recsieve.evaluation.load_dataset")
    ap.add_argument("--data", required=True, help="the dataset's folder")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset, args.data)
    split = leave_one_out(ds)
    contexts, targets = split.contexts("test"), split.targets("test")
    model = ContextModel.load(args.model, threads=2)
    if model.cooccurrence is None:
        raise SystemExit(f"{args.model}: the model holds no co-occurrence counts")
    n = ds.n_items
    hidden = history_mask(contexts, n)
    encoder = np.concatenate([model.score_items(contexts[lo:lo + 256]) for lo in range(0, len(contexts), 256)])
    cooc = cooccurrence_scores(model, contexts, n)
    z_enc, z_cooc = zscore(encoder, hidden), zscore(cooc, hidden)
    r_enc, r_cooc = ranks(encoder, hidden), ranks(cooc, hidden)
    systems = {"encoder": encoder, "co-occurrence": cooc}
    systems.update({f"z(encoder) + {w} z(co-occurrence)": z_enc + w * z_cooc for w in WEIGHTS})
    systems.update({f"rrf, co-occurrence x {w}": 1 / (RRF_K + r_enc) + w / (RRF_K + r_cooc) for w in RRF_WEIGHTS})
    out: dict = {"dataset": args.dataset, "users": len(contexts), "items": n, "stage": "test",
                 "model": "DIR", "systems": {}}
    base = None
    for name, scores in systems.items():
        m = rank_metrics(scores, targets, exclude=hidden)
        rank = m["rank"]
        per = {k: (rank <= k).astype(np.float64) for k in (100, 200, 400)}
        row = {f"recall@{k}": float(v.mean()) for k, v in per.items()}
        row["ndcg@10"] = float(m["ndcg@10"].mean())
        if base is None:
            base = per[200]
        else:
            row["recall@200_vs_encoder"] = paired_gain(list(per[200]), list(base))
        out["systems"][name] = row
        print(f"{name:36s} recall@100/200/400 {row['recall@100']:.4f} {row['recall@200']:.4f} "
              f"{row['recall@400']:.4f}  ndcg@10 {row['ndcg@10']:.4f}", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
