"""Data-parallel training on ``torch.distributed``: what one worker of a group does differently.

:func:`~recsieve.training.context_model.train_next_item` runs one loop, alone or as one worker
of a group (``parallel=DataParallel.current()``); the group is any initialised
``torch.distributed`` process group (Ray Train's ``TorchTrainer`` sets one up with the gloo
backend on CPU workers, ``torch.multiprocessing`` does too). The group trains **the same model
the single process would**:

- **Same batches.** Every worker draws the same batch order (the same seed); each takes its
  share of every batch's rows (:meth:`DataParallel.shard`: rows ``rank::world_size``), so a
  step of the group is a step of the single process over the same rows, and the learning rate,
  its schedule and the number of steps do not change with the number of workers.
- **Same gradient.** After the backward pass :meth:`DataParallel.average_gradients` replaces each
  worker's gradient (the mean over its own positions) by ``sum_r n_r g_r / sum_r n_r``: the
  mean over every position of the batch, the single process's gradient, in one all-reduce.
  A parameter no worker gave a gradient keeps none (as the optimiser sees it alone).
- **Same start.** :meth:`DataParallel.broadcast` gives every worker rank 0's initial weights.
- **One decision.** Validation users are shared out and their metric sums all-reduced, and the
  time budget's clock is the workers' mean elapsed time carried in the gradient's all-reduce, so
  every worker sees the same numbers and stops, keeps its best epoch and ends together.

What differs is only floating-point summation order, dropout masks (each worker seeds its own)
and the sampled softmax's negatives (each worker draws its own set for its rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from recsieve.errors import InvalidInputError

__all__ = ["DataParallel"]


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group: ``rank`` of ``world_size`` workers on the
    ``torch.distributed`` process ``group`` (``None``: the default group)."""

    rank: int
    world_size: int
    group: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise InvalidInputError("world_size", self.world_size, "must be a positive integer")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise InvalidInputError("rank", self.rank, f"must be in 0..{self.world_size - 1}")

    @classmethod
    def current(cls, group: Any = None) -> DataParallel:
        """This process in the initialised ``torch.distributed`` ``group`` (default: the default group)."""
        if not dist.is_available() or not dist.is_initialized():
            raise InvalidInputError("parallel", None, "torch.distributed has no initialised process group")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This worker's share of a batch's ``rows``: every ``world_size``-th one from ``rank``
        (rows sorted by length stay balanced; a batch smaller than the group leaves some empty)."""
        return rows[self.rank :: self.world_size]

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values."""
        for t in tensors:
            dist.broadcast(t.data, src, group=self.group)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the workers (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.tolist()

    def average_gradients(self, params: Sequence[torch.nn.Parameter], n: int,
                          extra: Sequence[float] = ()) -> tuple[int, list[float]]:
        """Replace each parameter's gradient -- the mean over this worker's ``n`` positions --
        by the mean over every worker's positions (``sum_r n_r g_r / sum_r n_r``). A worker with
        ``n == 0`` (no rows) takes part with nothing. Returns the group's positions and the
        ``extra`` values summed over the workers, carried in the same all-reduce."""
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        buf = torch.zeros(total + len(params) + 1 + len(extra), dtype=torch.float32)
        off = 0
        for i, (p, size) in enumerate(zip(params, sizes, strict=True)):
            if p.grad is not None and n:
                buf[off : off + size] = p.grad.detach().reshape(-1).float() * n
                buf[total + i] = 1.0  # this worker has a gradient for it
            off += size
        tail = total + len(params)
        buf[tail] = float(n)
        if extra:
            buf[tail + 1 :] = torch.tensor(list(extra), dtype=torch.float32)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        n_all = int(round(float(buf[tail])))
        off = 0
        for i, (p, size) in enumerate(zip(params, sizes, strict=True)):
            if buf[total + i] > 0 and n_all:
                p.grad = (buf[off : off + size] / n_all).view_as(p).to(p.dtype)
            else:
                p.grad = None
            off += size
        return n_all, buf[tail + 1 :].tolist()
