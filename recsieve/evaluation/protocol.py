"""Leave-one-out by time: the evaluation protocol.

For every user with at least ``min_len`` interactions, in chronological order:

- the **last** item is the *test* target,
- the **second-to-last** is the *validation* target,
- everything before is *history*.

Users with fewer interactions are dropped entirely (neither evaluated nor trained on).

What a model may see per stage (:func:`training_sequences` and :meth:`Split.contexts`):

========== ================================ ===========================================
stage      training data (every kept user)  context of an evaluated user -> target
========== ================================ ===========================================
``valid``  history                          history -> validation item
``test``   history + validation item        history + validation item -> test item
========== ================================ ===========================================

So a test target never reaches training, popularity or co-occurrence statistics, and in
the ``valid`` stage (used to choose hyperparameters) neither does the validation target.
``users=N`` evaluates a seeded random subset of N kept users; training still uses every
kept user's training part (no target of any user is ever trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsieve.errors import InvalidInputError
from recsieve.evaluation.datasets import Dataset

__all__ = ["STAGES", "Split", "leave_one_out", "training_sequences"]

#: The evaluation stages, in the order they come in time.
STAGES = ("valid", "test")


def _check_stage(stage: str) -> int:
    """How many items the stage holds out from the end of each sequence (valid: 2, test: 1)."""
    if stage not in STAGES:
        raise InvalidInputError("stage", stage, f"expected one of {STAGES}")
    return 2 if stage == "valid" else 1


@dataclass(frozen=True)
class Split:
    """A leave-one-out split of a dataset (build it with :func:`leave_one_out`).

    ``kept`` holds the dataset indices of users with at least ``min_len`` interactions,
    ``sequences`` their full sequences, and ``evaluated`` the positions (into ``kept``) of
    the users that are evaluated (all of them, or a seeded subset).
    """

    n_items: int
    kept: np.ndarray
    sequences: tuple[np.ndarray, ...]
    evaluated: np.ndarray
    min_len: int
    seed: int

    @property
    def n_users(self) -> int:
        """Number of evaluated users."""
        return int(self.evaluated.size)

    def contexts(self, stage: str = "test") -> list[np.ndarray]:
        """Per evaluated user, what the model may look at: the items before the target."""
        cut = _check_stage(stage)
        return [self.sequences[u][:-cut].copy() for u in self.evaluated]

    def targets(self, stage: str = "test") -> np.ndarray:
        """Per evaluated user, the held-out item (int64)."""
        cut = _check_stage(stage)
        return np.array([self.sequences[u][-cut] for u in self.evaluated], np.int64)

    def user_indices(self) -> np.ndarray:
        """Dataset user indices of the evaluated users."""
        return self.kept[self.evaluated]


def leave_one_out(
    dataset: Dataset, *, min_len: int = 5, users: int | None = None, seed: int = 0
) -> Split:
    """Split ``dataset`` leave-one-out by time (see the module docstring).

    ``users``: evaluate only this many kept users, drawn without replacement with
    ``numpy.random.default_rng(seed)`` (the same subset for the same data and seed);
    ``None`` or a number at least the kept count evaluates everyone.
    """
    if isinstance(min_len, bool) or not isinstance(min_len, int) or min_len < 3:
        raise InvalidInputError(
            "min_len", min_len, "must be an integer >= 3 (history, valid, test)"
        )
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or users < 1):
        raise InvalidInputError("users", users, "must be a positive integer or None")
    lengths = np.array([len(s) for s in dataset.sequences], np.int64)
    kept = np.flatnonzero(lengths >= min_len).astype(np.int64)
    if kept.size == 0:
        raise InvalidInputError(
            "min_len", min_len, f"no user of {dataset.name!r} has that many interactions"
        )
    if users is None or users >= kept.size:
        evaluated = np.arange(kept.size, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        evaluated = np.sort(rng.choice(kept.size, size=users, replace=False)).astype(np.int64)
    return Split(
        n_items=dataset.n_items,
        kept=kept,
        sequences=tuple(dataset.sequences[u] for u in kept),
        evaluated=evaluated,
        min_len=min_len,
        seed=seed,
    )


def training_sequences(split: Split, stage: str = "test") -> list[np.ndarray]:
    """What a model may train on for ``stage``: every kept user's sequence without its targets.

    ``test``: history + validation item; ``valid``: history only. Never a test target.
    The arrays are copies, not views, so the held-out items are not reachable through them.
    """
    cut = _check_stage(stage)
    return [seq[:-cut].copy() for seq in split.sequences]
