"""Plain-words requests made from a catalog's own attributes, for training and measuring
instruction following.

:func:`request_for` turns one of an item's attributes -- a category (genre), or the decade
of its ``year`` -- into a natural request ("I'm in the mood for comedy", "something from the
90s") and returns it with a check of whether any item satisfies it. Training attaches such
requests to real user contexts whose next item satisfies them (the recalled candidates that
do not are the negatives); evaluation derives one from a held-out target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsieve.types import Item

__all__ = ["Request", "request_for"]

_CATEGORY = (
    "something {v}",
    "I'm in the mood for {v}",
    "show me some {v}",
    "a good {v} one, please",
    "any {v} recommendations?",
    "{v} tonight",
)
_DECADE = (
    "something from the {v}s",
    "a {v}s classic",
    "I feel like the {v}s",
)


@dataclass(frozen=True)
class Request:
    """A request in plain words and the attribute it asks for (``field``: ``category`` or ``decade``)."""

    text: str
    field: str
    value: str | int

    def satisfied_by(self, item: Item) -> bool:
        """Whether ``item`` has the attribute the request asks for."""
        if self.field == "category":
            return any(c.lower() == str(self.value).lower() for c in item.categories)
        year = item.metadata.get("year")
        return isinstance(year, (int, float)) and not isinstance(year, bool) and int(year) // 10 * 10 == self.value


def request_for(item: Item, rng: np.random.Generator) -> Request | None:
    """A random request that ``item`` satisfies, from its categories or its year's decade;
    ``None`` when it has neither."""
    options: list[tuple[str, str | int]] = [("category", c) for c in item.categories if c.strip()]
    year = item.metadata.get("year")
    if isinstance(year, (int, float)) and not isinstance(year, bool) and year > 0:
        options.append(("decade", int(year) // 10 * 10))
    if not options:
        return None
    field, value = options[int(rng.integers(len(options)))]
    templates = _CATEGORY if field == "category" else _DECADE
    # decades in two digits only where that is unambiguous ("the 90s"; "the 1910s", "the 2000s")
    shown = str(value).lower() if field == "category" else str(value)[-2:] if 1920 <= int(value) < 2000 else str(value)
    return Request(templates[int(rng.integers(len(templates)))].format(v=shown), field, value)
