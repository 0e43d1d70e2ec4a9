"""The held-out metric that early stopping reads (:func:`ndcg10`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ndcg10"]


def ndcg10(scores: np.ndarray, targets: np.ndarray, contexts: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean NDCG@10 and HR@10, full ranking, context items excluded (ties: expected rank)."""
    s = scores.astype(np.float64, copy=True)
    rows = np.arange(len(targets))
    t = s[rows, targets].copy()
    for r, c in enumerate(contexts):
        s[r, np.asarray(c, np.int64)] = -np.inf
    s[rows, targets] = t
    greater = (s > t[:, None]).sum(1)
    equal = (s == t[:, None]).sum(1) - 1
    ndcg = np.zeros(len(t))
    hr = np.zeros(len(t))
    for r in range(len(t)):
        if np.asarray(contexts[r]).size and (np.asarray(contexts[r]) == targets[r]).any():
            continue  # a repeat of a consumed item cannot be recommended: a miss
        ps = np.arange(greater[r], greater[r] + equal[r] + 1)
        inside = ps[ps < 10]
        ndcg[r] = (1.0 / np.log2(inside + 2)).sum() / (equal[r] + 1)
        hr[r] = inside.size / (equal[r] + 1)
    return float(ndcg.mean()), float(hr.mean())
