"""Seconds per training step of the context encoder on ML-1M-sized batches, per setting.

python bench/context_train_speed.py [--steps 6] [--threads 1]
One step = the batch-128 window of the 128 longest ML-1M training users (200 positions each),
full or sampled softmax, fp32 or bf16 autocast, text-built (adapter + ID) or ID-only tokens.
Settings are interleaved round-robin so that a busy machine slows all of them alike.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from recsieve.context import ContextModel, ContextSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--negatives", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    n = a.items
    text = torch.from_numpy(rng.normal(size=(n, 384)).astype(np.float32))
    rows = torch.from_numpy(rng.integers(0, n, (128, 201)))
    inputs, targets = rows[:, :-1], rows[:, 1:].reshape(-1)
    q = torch.full((n,), 1.0 / n)
    settings = {
        (tok, bf, smp): None for tok in ("text", "id") for bf in (False, True) for smp in (False, True)
    }
    models = {}
    for key in settings:
        torch.manual_seed(0)
        m = ContextModel(ContextSettings(n_warm=n, text_dim=384 if key[0] == "text" else 0))
        m.tower.train()
        m.encoder.train()
        opt = torch.optim.AdamW(list(m.tower.parameters()) + list(m.encoder.parameters()), lr=1e-3)
        models[key] = (m, opt)
    times = {k: [] for k in settings}
    for step in range(a.steps + 1):
        for key, (m, opt) in models.items():
            tok, bf, smp = key
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                table = m.tower(text if tok == "text" else None)
                h = m.encoder(table, inputs).reshape(-1, 64)
                if smp:
                    negs = torch.multinomial(q, a.negatives, replacement=True)
                    pos = (h * table[targets]).sum(-1).float() - torch.log(q[targets] * a.negatives)
                    neg = (h @ table[negs].T).float() - torch.log(q[negs] * a.negatives)
                    loss = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros_like(targets))
                else:
                    loss = F.cross_entropy((h @ table.T).float(), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step:  # the first is warm-up
                times[key].append(time.perf_counter() - t)
    out = {
        f"{tok}/{'bf16' if bf else 'fp32'}/{'sampled' + str(a.negatives) if smp else 'full'}": round(
            float(np.median(v)), 3
        )
        for (tok, bf, smp), v in times.items()
    }
    print(json.dumps({"seconds_per_step_median": out, "batch": "128 x 200 positions", "items": n,
                      "threads": a.threads}))


if __name__ == "__main__":
    main()
