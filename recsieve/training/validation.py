"""Validation of next-item training: NDCG@10 and HR@10 of held-out users' last training item,
full ranking over the catalog, the user's history excluded (ties take their expected rank)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from recsieve.training.batches import right_pad
from recsieve.training.data_parallel import DataParallel

if TYPE_CHECKING:
    from recsieve.training.context_model import NextItemTask, TrainConfig

__all__ = ["ndcg10", "validate", "validation_rows"]


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


def validate(task: NextItemTask, ctx: list[np.ndarray], tgt: np.ndarray, max_len: int, bf16: bool,
             parallel: DataParallel | None) -> tuple[float, float]:
    """NDCG@10 and HR@10 on the validation users; a group shares them out and sums the metrics."""
    if parallel is None:
        return _evaluate(task, ctx, tgt, max_len, bf16)
    mine = slice(parallel.rank, None, parallel.world_size)
    c, t = ctx[mine], tgt[mine]
    nd, hr = _evaluate(task, c, t, max_len, bf16) if len(t) else (0.0, 0.0)
    nd_sum, hr_sum = parallel.sum([nd * len(t), hr * len(t)])
    return nd_sum / len(tgt), hr_sum / len(tgt)


@torch.no_grad()
def _evaluate(task: NextItemTask, ctx, tgt, max_len: int, bf16: bool) -> tuple[float, float]:
    scores = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        table = task.table(None)
    table = table.float()
    for lo in range(0, len(ctx), 256):
        rows = torch.from_numpy(right_pad(ctx[lo : lo + 256], max_len))
        rows = rows[:, : max(1, int((rows >= 0).sum(1).max()))]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = task.user(table, rows)
        scores.append((h.float() @ table.T).numpy())
    return ndcg10(np.concatenate(scores), tgt, ctx)


def validation_rows(sequences: Sequence[np.ndarray], cfg: TrainConfig,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """The rows of ``sequences`` whose last item :func:`train_next_item` holds out for validation
    (sorted): a draw of up to ``cfg.valid_users`` (and ``cfg.valid_share``) of those with 3+
    items, from ``rng`` (default: seeded with ``cfg.seed``, the draw the training makes)."""
    rng = np.random.default_rng(cfg.seed) if rng is None else rng
    eligible = np.flatnonzero([len(s) >= 3 for s in sequences])
    n_valid = min(cfg.valid_users, int(eligible.size * cfg.valid_share)) if cfg.valid_users else 0
    return np.sort(rng.choice(eligible, size=n_valid, replace=False)) if n_valid else np.zeros(0, np.int64)
