"""An exponential moving average of a model's weights, swapped in to validate and to keep.

Each optimiser step moves the average toward the live weights by ``1 - decay`` (warmed up as
``min(decay, (1 + step) / (10 + step))``, so the first steps are not pulled toward the
initialisation). :meth:`WeightAverage.swapped` puts the average in the parameters' place for
the duration of a ``with`` block and restores the live weights after it, so validation and
``state_dict()`` read the average while training continues from the live weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from recsieve.errors import InvalidInputError

__all__ = ["WeightAverage"]


class WeightAverage:
    """Exponential moving average of ``params`` with ``decay`` in (0, 1)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise InvalidInputError("ema", decay, "must be a decay in (0, 1)")
        self.params = list(params)
        self.decay = float(decay)
        self.steps = 0
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average toward the live weights (call after each optimiser step)."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def keep(self) -> None:
        """Put the average in the parameters' place for good."""
        torch._foreach_copy_([p.data for p in self.params], self.average)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The average in the parameters' place inside the block; the live weights after it."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], live)
