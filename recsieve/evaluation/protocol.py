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

Cold items (:func:`cold_item_split`, ``recsieve evaluate --cold-items FRACTION``): a seeded
random ``FRACTION`` of the catalog's items (:func:`choose_cold_items`) is declared *cold*. Every
interaction with a cold item is removed from every kept user's sequence **except the stage's
target itself**: from training sequences, from the contexts of evaluated users, and from the
validation position in the ``test`` stage (a cold validation item is simply gone, the items
before it move up). The users evaluated are those whose target is cold and who have at least
one (warm) item left before it; ``users=N`` draws a seeded subset of them. So no system ever
sees a cold item in training or in a context, yet cold items stay in the catalog with their
text and are ranked like every other item: only a system that reads item text can find them.
Which users are *kept* (``min_len``) is decided on the full sequences, as without cold items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsieve.errors import InvalidInputError
from recsieve.evaluation.datasets import Dataset

__all__ = ["STAGES", "Split", "leave_one_out", "training_sequences", "choose_cold_items", "cold_item_split",
           "check_cold_fraction"]

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

    A cold-item split (:func:`cold_item_split`) also holds ``cold``, the sorted cold item
    indices, and ``cold_stage``, the one stage it was built for (its sequences keep that
    stage's target only); asking it for another stage is an error.
    """

    n_items: int
    kept: np.ndarray
    sequences: tuple[np.ndarray, ...]
    evaluated: np.ndarray
    min_len: int
    seed: int
    cold: np.ndarray | None = None
    cold_stage: str | None = None

    def cut(self, stage: str) -> int:
        """How many items ``stage`` holds out from the end of each sequence (valid: 2, test: 1)."""
        cut = _check_stage(stage)
        if self.cold_stage is not None and stage != self.cold_stage:
            raise InvalidInputError("stage", stage, f"this cold-item split was built for stage {self.cold_stage!r}")
        return cut

    @property
    def n_users(self) -> int:
        """Number of evaluated users."""
        return int(self.evaluated.size)

    def contexts(self, stage: str = "test") -> list[np.ndarray]:
        """Per evaluated user, what the model may look at: the items before the target."""
        cut = self.cut(stage)
        return [self.sequences[u][:-cut].copy() for u in self.evaluated]

    def targets(self, stage: str = "test") -> np.ndarray:
        """Per evaluated user, the held-out item (int64)."""
        cut = self.cut(stage)
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
    For a cold-item split, no cold item either (see the module docstring).
    """
    cut = split.cut(stage)
    return [seq[:-cut].copy() for seq in split.sequences]


#: Mixed into the cold-item draw's seed, so it is independent of the user subset's draw.
COLD_SALT = 0xC01D


def check_cold_fraction(fraction: float, field: str = "cold_items") -> float:
    """``fraction`` as a float, or :class:`InvalidInputError` naming ``field`` unless 0 < it < 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0.0 < fraction < 1.0:
        raise InvalidInputError(field, fraction, "must be a fraction strictly between 0 and 1 "
                                "(the share of the catalog's items declared cold)")
    return float(fraction)


def choose_cold_items(n_items: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The cold items: ``round(fraction * n_items)`` (at least 1, at most ``n_items - 1``) item
    indices drawn without replacement, seeded by ``seed``; sorted int64. The same for the same
    catalog size, fraction and seed."""
    fraction = check_cold_fraction(fraction)
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 2:
        raise InvalidInputError("n_items", n_items, "need at least 2 items to declare some cold")
    k = min(int(n_items) - 1, max(1, round(fraction * n_items)))
    rng = np.random.default_rng([COLD_SALT, int(seed)])
    return np.sort(rng.choice(int(n_items), size=k, replace=False)).astype(np.int64)


def cold_item_split(
    dataset: Dataset,
    cold_items: float,
    *,
    stage: str = "test",
    min_len: int = 5,
    users: int | None = None,
    seed: int = 0,
) -> Split:
    """A leave-one-out split for ``stage`` with a seeded ``cold_items`` fraction of the items cold
    (see the module docstring): cold interactions removed everywhere but the stage's target, and
    only users whose target is cold evaluated (``users``: a seeded subset of them)."""
    cut = _check_stage(stage)
    base = leave_one_out(dataset, min_len=min_len, users=users, seed=seed)  # validates min_len, users
    cold = choose_cold_items(dataset.n_items, cold_items, seed)
    is_cold = np.zeros(dataset.n_items, bool)
    is_cold[cold] = True
    sequences = []
    for seq in base.sequences:
        head = seq[:-cut]
        sequences.append(np.concatenate([head[~is_cold[head]], seq[-cut:]]))
    targets = np.array([is_cold[s[-cut]] and len(s) > cut for s in sequences], bool)
    evaluated = np.flatnonzero(targets).astype(np.int64)
    if evaluated.size == 0:
        raise InvalidInputError("cold_items", cold_items, f"no kept user's {stage} target is one of the "
                                f"{cold.size} cold items; declare a larger fraction cold")
    if users is not None and users < evaluated.size:
        rng = np.random.default_rng(seed)
        evaluated = np.sort(rng.choice(evaluated, size=users, replace=False)).astype(np.int64)
    return Split(
        n_items=dataset.n_items,
        kept=base.kept,
        sequences=tuple(sequences),
        evaluated=evaluated,
        min_len=min_len,
        seed=seed,
        cold=cold,
        cold_stage=stage,
    )
