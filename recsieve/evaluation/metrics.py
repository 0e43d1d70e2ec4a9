"""Full-ranking metrics with ties counted honestly.

Each user's target is ranked against **all** items, except (by default) the items of the
user's context (history); the target itself is never compared with itself. With

- ``g`` = number of ranked items whose score is **greater** than the target's,
- ``e`` = number of *other* ranked items whose score **equals** the target's,

the target's 0-based position under uniformly random tie-breaking is uniform on
``{g, g+1, ..., g+e}``. Every metric is the **exact expectation** over that tie block:

- expected rank (1-based) = ``g + e/2 + 1``;
- HR@K (= Recall@K, one target) = ``|{g..g+e} ∩ {0..K-1}| / (e+1)``;
- NDCG@K = ``sum over p in {g..g+e} ∩ {0..K-1} of 1/log2(p+2)``, divided by ``e+1``
  (ideal DCG is 1 for a single relevant item);
- MRR = ``sum over p in {g..g+e} of 1/(p+1)``, divided by ``e+1``.

So a model that gives every item the same score gets HR@K = K/n, never a perfect score.
A NaN score is an error. A target that is itself in the excluded history (a repeat
interaction) cannot be recommended and counts as a miss (0 for every metric).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsieve.errors import InvalidInputError
from recsieve.intervals import paired_gain

__all__ = [
    "paired_gain",
    "check_scores",
    "history_mask",
    "tie_counts",
    "rank_metrics",
    "expected_rank",
    "top_k",
    "catalog_coverage",
    "recall_coverage",
]


def check_scores(
    scores: np.ndarray, n_users: int, n_items: int, field: str = "scores"
) -> np.ndarray:
    """Check a score matrix: real-valued, shape ``(n_users, n_items)``, no NaN. Returns it."""
    scores = np.asarray(scores)
    if scores.shape != (n_users, n_items):
        raise InvalidInputError(field, scores.shape, f"expected shape {(n_users, n_items)}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise InvalidInputError(field, scores.dtype, "expected a floating-point array")
    nan = np.isnan(scores)
    if nan.any():
        user, item = np.argwhere(nan)[0]
        raise InvalidInputError(f"{field}[{user}, {item}]", float("nan"), "NaN score: not a rank")
    return scores


def history_mask(contexts: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Boolean ``(len(contexts), n_items)``: True where the item is in the user's context."""
    mask = np.zeros((len(contexts), n_items), dtype=bool)
    if len(contexts):
        rows = np.repeat(np.arange(len(contexts)), [len(c) for c in contexts])
        cols = np.concatenate([np.asarray(c, np.int64) for c in contexts])
        mask[rows, cols] = True
    return mask


def tie_counts(
    scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(greater, equal, rankable)`` per user (see the module docstring).

    ``greater``/``equal`` count the non-excluded items scoring above / the same as the
    target (the target not counted); ``rankable`` is False where the target is excluded.
    """
    scores = np.asarray(scores)
    scores = check_scores(scores, len(targets), scores.shape[1] if scores.ndim == 2 else -1)
    targets = np.asarray(targets, np.int64)
    rows = np.arange(len(targets))
    t = scores[rows, targets][:, None]
    keep = np.ones(scores.shape, bool) if exclude is None else ~exclude
    greater = ((scores > t) & keep).sum(axis=1)
    equal = ((scores == t) & keep).sum(axis=1) - keep[rows, targets]
    return greater.astype(np.int64), equal.astype(np.int64), keep[rows, targets].copy()


def expected_rank(greater: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """1-based expected rank under random tie-breaking: ``g + e/2 + 1``."""
    return greater + equal / 2.0 + 1.0


def rank_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: np.ndarray | None = None,
    ks: Sequence[int] = (10, 20),
) -> dict[str, np.ndarray]:
    """Per-user metrics (float64 arrays): ``hr@K``, ``ndcg@K`` for each K, ``mrr``, ``rank``.

    ``rank`` is the expected 1-based rank (``inf`` for a target that is excluded).
    """
    greater, equal, rankable = tie_counts(scores, targets, exclude)
    n_items = scores.shape[1]
    pos = np.arange(n_items + 1, dtype=np.float64)
    # prefix sums: disc[p] = sum_{q<p} 1/log2(q+2), harm[p] = sum_{q<p} 1/(q+1)
    disc = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(pos + 2.0))])
    harm = np.concatenate([[0.0], np.cumsum(1.0 / (pos + 1.0))])
    block = equal + 1.0
    lo, hi = greater, greater + equal + 1  # the block of positions is [lo, hi)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError("ks", k, "cut-offs must be positive integers")
        a, b = np.minimum(lo, k), np.minimum(hi, k)
        out[f"hr@{k}"] = np.where(rankable, (b - a) / block, 0.0)
        out[f"ndcg@{k}"] = np.where(rankable, (disc[b] - disc[a]) / block, 0.0)
    out["mrr"] = np.where(rankable, (harm[hi] - harm[lo]) / block, 0.0)
    out["rank"] = np.where(rankable, expected_rank(greater, equal), np.inf)
    return out


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices ``(n_users, k)`` of each user's k best non-excluded items, best first.

    Ties are broken by the lower item index (a stable sort), so the result is deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else None
    if part is None:
        return np.argsort(-scores, axis=1, kind="stable")
    # argpartition may cut a tie block arbitrarily: take everything >= the k-th score, then sort
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    out = np.empty((scores.shape[0], k), np.int64)
    for u in range(scores.shape[0]):
        cand = np.flatnonzero(scores[u] >= kth[u])
        order = np.lexsort((cand, -scores[u, cand]))
        out[u] = cand[order[:k]]
    return out


def catalog_coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one user's list."""
    return float(np.unique(top_items).size / n_items) if n_items else 0.0


def recall_coverage(candidates: Sequence[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Per user, 1.0 if the target is among that user's recalled candidates, else 0.0."""
    if len(candidates) != len(targets):
        raise InvalidInputError("candidates", len(candidates), f"expected {len(targets)} lists")
    return np.array(
        [
            float(int(t) in set(np.asarray(c).tolist()))
            for c, t in zip(candidates, targets, strict=True)
        ]
    )
