"""Serving latency of the context model on 1 torch thread: encode one user, score 200 candidates.

python bench/context_latency.py [--model DIR] [--items 3706] [--events 200] [--candidates 200] [--reps 300]
Weights do not change the work, so without --model a random ML-1M-sized model is timed.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recsieve.context import ContextModel, ContextSettings


def pct(xs, q):
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--instruction", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.model:
        m = ContextModel.load(a.model, threads=1)
    else:
        s = ContextSettings(n_warm=a.items, instruction_dim=384 if a.instruction else 0)
        m = ContextModel(s, threads=1)
        m.set_items(np.random.default_rng(0).normal(size=(a.items, 384)).astype(np.float32))
    if m.scorer is None:
        m.new_scorer()
    rng = np.random.default_rng(1)
    enc, cand, full = [], [], []
    for r in range(a.reps):
        ctx = rng.integers(0, m.n_items, a.events)
        cands = rng.choice(m.n_items, a.candidates, replace=False)
        t = time.perf_counter()
        u = m.encode([ctx])
        t1 = time.perf_counter()
        m.score_candidates(ctx, cands)
        t2 = time.perf_counter()
        _ = u @ m._table.numpy().T  # exact scoring of the whole catalog (what an index replaces)
        t3 = time.perf_counter()
        if r >= 10:  # warm-up
            enc.append(t1 - t)
            cand.append(t2 - t1)
            full.append(t3 - t2)
    print(json.dumps({
        "items": m.n_items, "events": a.events, "candidates": a.candidates, "threads": 1,
        "encode_ms": {"p50": pct(enc, 50), "p95": pct(enc, 95)},
        "score_candidates_ms": {"p50": pct(cand, 50), "p95": pct(cand, 95)},
        "dot_all_items_ms": {"p50": pct(full, 50), "p95": pct(full, 95)},
    }))


if __name__ == "__main__":
    main()
