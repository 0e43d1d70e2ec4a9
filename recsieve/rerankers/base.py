"""The re-ranker protocol: score one user context against candidate item texts.

A re-ranker is the fine sieve. It reads the user's context (rendered by
:func:`recsieve.rerankers.context.render_context`) and each candidate's catalog text, and
returns one score per candidate: ``float32``, shape ``(len(items),)``, finite, higher is
better. :func:`check_scores` checks that contract where stages meet (the engine calls it on
every re-ranker's output), so a broken implementation fails loudly instead of reordering
results with NaN.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from recsieve.errors import InvalidInputError

__all__ = ["Reranker", "check_pair_input", "check_scores"]


class Reranker(ABC):
    """Scores candidate items for a user context; one abstract method.

    ``name`` names the implementation (``"cross-encoder"``); ``model_id`` names the model it
    runs (a path), so that caches keyed by it never mix scores of two models.
    """

    name: str = "reranker"
    model_id: str = ""

    @abstractmethod
    def score(self, context: str, items: Sequence[str]) -> np.ndarray:
        """Score each item text against ``context``.

        Returns a ``float32`` array of shape ``(len(items),)``, finite, higher = better. An
        empty ``items`` gives an empty array.
        """


def check_pair_input(context: object, items: object) -> None:
    """Check a :meth:`Reranker.score` call's arguments: a string context and a sequence of
    string item texts; raises :class:`~recsieve.errors.InvalidInputError` naming the bad one."""
    if not isinstance(context, str):
        raise InvalidInputError("context", context, "must be a string")
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise InvalidInputError("items", type(items).__name__, "must be a sequence of item texts")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError(f"items[{i}]", text, "must be a string")


def check_scores(scores: object, n: int) -> np.ndarray:
    """Check a re-ranker's output against the contract and return it unchanged.

    Raises :class:`~recsieve.errors.InvalidInputError` (field ``"reranker.scores"``) unless
    ``scores`` is a 1-d ``float32`` numpy array of length ``n`` whose values are all finite.

    >>> check_scores(np.array([0.5, -1.0], dtype=np.float32), 2)
    array([ 0.5, -1. ], dtype=float32)
    """
    if not isinstance(scores, np.ndarray):
        raise InvalidInputError("reranker.scores", type(scores).__name__, "must be a numpy array")
    if scores.dtype != np.float32:
        raise InvalidInputError("reranker.scores", str(scores.dtype), "must have dtype float32")
    if scores.shape != (n,):
        raise InvalidInputError("reranker.scores", scores.shape, f"must have shape ({n},), one score per item")
    if n and not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise InvalidInputError(
            f"reranker.scores[{bad}]", float(scores[bad]), "scores must be finite (NaN/inf is an error, not a rank)"
        )
    return scores
