"""The per-channel columns of :func:`~recsieve.engine.ranker.candidate_features` (each channel's
rank and score of every candidate) for a whole chunk of requests at once, where serving loops
over each candidate of each list in Python; ``tests/test_batched_examples.py`` compares them with
serving's on random inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsieve.training.batched_recall import Lists, lookup

__all__ = ["list_features"]


def list_features(fused: Lists, lists: Sequence[Lists], base: int) -> np.ndarray:
    """The per-channel columns of :func:`~recsieve.engine.ranker.candidate_features` (each channel's
    ``inv_rank`` and ``score``) for every fused candidate of every request: ``(len(fused.rows), 2 * C)``."""
    g = fused.groups()
    keys = g * base + fused.rows
    cols = []
    for lst in lists:
        inv = np.zeros(keys.size, np.float32)
        score = np.zeros(keys.size, np.float32)
        lg = lst.groups()
        if lst.rows.size:
            lkeys = lg * base + lst.rows
            order = np.argsort(lkeys, kind="stable")
            at = lookup(keys, lkeys[order], order.astype(np.int64), default=-1)
            top = np.zeros(lst.n_groups, np.float32)
            np.maximum.at(top, lg, np.abs(lst.scores))
            top[top == 0] = 1.0
            hit = at >= 0
            i = at[hit]
            pos = (i - lst.offsets[lg[i]]).astype(np.float64)
            inv[hit] = 1.0 / np.sqrt(pos + 1.0)
            score[hit] = lst.scores[i] / top[lg[i]]
        cols += [inv, score]
    return np.stack(cols, axis=1) if cols else np.zeros((keys.size, 0), np.float32)

