"""How next-item training deals its sequences into batches (:func:`~recsieve.training.context_model.train_next_item`).

:func:`check_sequences` validates the training sequences, :func:`right_pad` packs a user's last
items into a right-padded row, :func:`shifted` turns a batch of such rows into inputs and targets,
and :func:`bucketed` orders one epoch's users for
``TrainConfig.batching = "bucket"`` (pools cut by length, see
:class:`~recsieve.training.context_model.TrainConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recsieve.errors import InvalidInputError

__all__ = ["BATCHING", "BUCKET_POOL", "bucketed", "check_sequences", "right_pad", "shifted", "unseen_items"]

#: The ways next-item training deals its users into batches (``TrainConfig.batching``).
BATCHING = ("random", "length", "bucket")

#: Batches per pool of ``batching="bucket"``: on ML-1M (batches of 128 users) a pool of 8
#: batches' users cut into batches by length leaves 10% of the padded positions padding, against
#: 46% for random batches (16: 5%, 32: 3.4%, with fewer distinct batches per epoch).
BUCKET_POOL = 8


def bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """``order`` with each run of ``BUCKET_POOL * batch_size`` users sorted by ``lengths``
    (stable), so consecutive ``batch_size`` users are of similar length."""
    pool = BUCKET_POOL * batch_size
    parts = [q[np.argsort(lengths[q], kind="stable")] for q in np.split(order, range(pool, len(order), pool))]
    return np.concatenate(parts) if parts else order


def right_pad(seqs: Sequence[np.ndarray], length: int, pad: int = -1) -> np.ndarray:
    """int64 ``(len(seqs), length)``: the last ``length`` entries of each, then ``pad``."""
    out = np.full((len(seqs), length), pad, np.int64)
    for r, seq in enumerate(seqs):
        tail = np.asarray(seq, np.int64)[-length:]
        out[r, : tail.size] = tail
    return out


def shifted(batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets (the next item) and the real positions ``(b, n)`` of right-padded ``batch``
    rows ``(b, n + 1)``, all-padding columns dropped first. A row's last item is only a target: it
    is dropped from the inputs, so the newest input (age 0, as at serving) predicts it."""
    tok = torch.from_numpy(batch[:, (batch >= 0).any(axis=0)])
    inputs, targets = tok[:, :-1], tok[:, 1:]
    inputs = inputs.masked_fill(targets < 0, -1)
    return inputs, targets, (inputs >= 0) & (targets >= 0)


def check_sequences(sequences: Sequence[np.ndarray], n_items: int) -> list[np.ndarray]:
    """The training ``sequences`` as int64 arrays; :class:`InvalidInputError` unless one holds 2+
    items and every item is a row ``0..n_items-1``."""
    seqs = [np.asarray(s, np.int64) for s in sequences]
    if not any(len(s) >= 2 for s in seqs):
        raise InvalidInputError("sequences", len(seqs), "need a sequence of 2+ items")
    top = max((int(s.max()) for s in seqs if s.size), default=0)
    if top >= n_items or min((int(s.min()) for s in seqs if s.size), default=0) < 0:
        raise InvalidInputError("sequences", top, f"item index outside 0..{n_items - 1}")
    return seqs


def unseen_items(sequences: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """bool ``(n_items,)``: the rows that occur in no training sequence (cold for the tower)."""
    seen = np.zeros(n_items, bool)
    for s in sequences:
        seen[np.asarray(s, np.int64)] = True
    return ~seen
