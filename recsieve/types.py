"""Small frozen dataclasses shared by every stage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from recsieve.errors import InvalidInputError

__all__ = ["Scalar", "Item", "Event", "EVENT_KINDS", "Recommendation", "Candidates"]

#: A metadata value usable in filters.
Scalar = str | int | float | bool

#: Default weight of each event kind in a user's profile; negative kinds push away.
EVENT_KINDS: Mapping[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "cart": 2.0,
    "purchase": 3.0,
    "rating": 1.0,
    "skip": -0.5,
    "dislike": -1.0,
}


@dataclass(frozen=True, eq=True)
class Item:
    """An item of the catalog.

    ``title``, ``description``, ``categories`` and ``attributes`` are text: they are rendered
    into the string that gets embedded. ``metadata`` holds typed scalars kept for filtering
    (``price < 30``); a template may render them too.
    """

    id: str
    title: str = ""
    description: str = ""
    categories: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Scalar] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict in the catalog's file format (the inverse of ``Catalog`` parsing)."""
        out: dict = {"id": self.id}
        if self.title:
            out["title"] = self.title
        if self.description:
            out["description"] = self.description
        if self.categories:
            out["categories"] = list(self.categories)
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


@dataclass(frozen=True)
class Event:
    """Something a user did with an item.

    ``ts`` is seconds since the epoch (``None``: the time it is recorded). ``weight``
    overrides the kind's default weight (for ``rating``, the rating itself may be given).
    ``text`` is optional free text (a review, a query) shown to the re-ranker.
    """

    user_id: str
    item_id: str
    kind: str = "click"
    ts: float | None = None
    weight: float | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        for name in ("user_id", "item_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"event.{name}", value, "must be a non-empty string")
        if self.kind not in EVENT_KINDS:
            raise InvalidInputError(
                "event.kind", self.kind, f"unknown kind; expected one of {sorted(EVENT_KINDS)}"
            )
        if self.ts is not None:
            if isinstance(self.ts, bool) or not isinstance(self.ts, (int, float)):
                raise InvalidInputError("event.ts", self.ts, "must be seconds since the epoch")
            if not math.isfinite(self.ts) or self.ts < 0:
                raise InvalidInputError("event.ts", self.ts, "must be a finite, non-negative time")
        if self.weight is not None and (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, (int, float))
            or not math.isfinite(self.weight)
        ):
            raise InvalidInputError("event.weight", self.weight, "must be a finite number")


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: its final score and rank, the recall score, and why."""

    item_id: str
    score: float
    recall_score: float
    rank: int
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "item_id": self.item_id,
            "score": self.score,
            "recall_score": self.recall_score,
            "rank": self.rank,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Candidates:
    """Recall's output: catalog rows and their recall scores, best first.

    ``rows`` is int64 ``(n,)``, ``scores`` float32 ``(n,)``, no duplicates, no padding.
    """

    rows: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        check_candidates(self.rows, self.scores)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def check_candidates(rows: np.ndarray, scores: np.ndarray) -> None:
    """Check the shape contract of recall's output (where stages meet)."""
    if rows.dtype != np.int64 or rows.ndim != 1:
        raise InvalidInputError("candidates.rows", rows.dtype, "must be a 1-d int64 array")
    if scores.dtype != np.float32 or scores.shape != rows.shape:
        raise InvalidInputError(
            "candidates.scores", scores.shape, f"must be float32 of shape {rows.shape}"
        )
    if rows.size and (rows < 0).any():
        raise InvalidInputError("candidates.rows", int(rows.min()), "padding (-1) leaked into candidates")
    if np.unique(rows).size != rows.size:
        raise InvalidInputError("candidates.rows", rows.size, "duplicate rows in candidates")
