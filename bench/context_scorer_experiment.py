"""Train the candidate scorer on a saved context model's own top-200 and measure it on ML-1M.

python bench/context_scorer_experiment.py --model DIR [--budget 300] [--users N] [--examples-per-user 2]
Training examples: the last ``examples-per-user`` positions of each user's *training* part
(history + validation item; never the test item), candidates = the encoder's top 200 with the
context excluded, the target added where recall missed it. Test: every user's test item,
candidates = the encoder's top 200 (history excluded); items outside them keep the encoder's
order below the candidates. Reports NDCG@10/HR@10 of encoder-alone vs encoder+scorer with a
paired 95% interval of the difference.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recsieve.context import ContextModel
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.metrics import history_mask, rank_metrics
from recsieve.evaluation.protocol import leave_one_out, training_sequences
from recsieve.training.batches import right_pad
from recsieve.training.scorer import fit_candidate_scorer


def top_candidates(model, contexts, k=200, batch=256):
    out = []
    for lo in range(0, len(contexts), batch):
        ctx = contexts[lo : lo + batch]
        s = model.score_items(ctx)
        s[history_mask(ctx, s.shape[1])] = -np.inf
        out.append(np.argsort(-s, axis=1)[:, :k])
    return np.concatenate(out)


@torch.no_grad()
def rerank_scores(model, contexts, cands, batch=64):
    out = np.zeros(cands.shape, np.float32)
    for lo in range(0, len(contexts), batch):
        rows = torch.from_numpy(right_pad(contexts[lo : lo + batch], model.settings.max_len))
        rows = rows[:, : max(1, int((rows >= 0).sum(1).max()))]
        s = model.scorer(model._table, rows, torch.from_numpy(cands[lo : lo + batch]))
        out[lo : lo + batch] = s.float().numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/ml-1m")
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--examples-per-user", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("ml-1m", a.data)
    split = leave_one_out(data)
    model = ContextModel.load(a.model, threads=a.threads)
    train = training_sequences(split, "test")
    ctxs, tgts = [], []
    for s in train:
        for j in range(1, a.examples_per_user + 1):
            if len(s) > j + 1:
                ctxs.append(s[:-j])
                tgts.append(int(s[-j]))
    t0 = time.time()
    cands = top_candidates(model, ctxs)
    hit = (cands == np.array(tgts)[:, None]).any(1)
    cands[~hit, -1] = np.array(tgts)[~hit]  # the target always among the candidates
    tix = [int(np.flatnonzero(c == t)[0]) for c, t in zip(cands, tgts)]
    t1 = time.time()
    hist = fit_candidate_scorer(model, ctxs, list(cands), tix, epochs=a.epochs, budget_s=a.budget,
                                lr=a.lr, threads=a.threads, progress=True)
    t2 = time.time()
    contexts, targets = split.contexts("test"), split.targets("test")
    enc = []
    for lo in range(0, len(contexts), 256):
        enc.append(model.score_items(contexts[lo : lo + 256]))
    enc = np.concatenate(enc)
    mask = history_mask(contexts, enc.shape[1])
    e = np.where(mask, -np.inf, enc)
    tc = np.argsort(-e, axis=1)[:, :200]
    rr = rerank_scores(model, contexts, tc)
    fused = enc - 1e6  # outside the candidates: encoder order, below every candidate
    np.put_along_axis(fused, tc, rr, axis=1)
    m_enc = rank_metrics(enc, targets, mask)
    m_fin = rank_metrics(fused, targets, mask)
    d = m_fin["ndcg@10"] - m_enc["ndcg@10"]
    ci = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    print(json.dumps({
        "examples": len(ctxs), "train_recall@200": float(hit.mean()), "candidates_s": round(t1 - t0, 1),
        "scorer_history": hist, "scorer_train_s": round(t2 - t1, 1), "users": len(targets),
        "encoder": {"ndcg@10": float(m_enc["ndcg@10"].mean()), "hr@10": float(m_enc["hr@10"].mean())},
        "encoder+scorer": {"ndcg@10": float(m_fin["ndcg@10"].mean()), "hr@10": float(m_fin["hr@10"].mean())},
        "ndcg@10_diff": float(d.mean()), "ndcg@10_diff_ci95": float(ci),
        "test_recall@200": float((tc == targets[:, None]).any(1).mean()),
    }))
    if a.save:
        model.save(a.save)


if __name__ == "__main__":
    main()
