"""The user-context text a re-ranker reads.

One function renders it, for serving and for training alike, so the model never sees text
at serving time that is shaped differently from what it was trained on. The text is the
instruction first (when there is one), then the most recent events, most recent first, each
with its kind and a coarse recency::

    request: something lighter | recent: clicked Heat (1995) (just now); purchased Casino (1995) (2 days ago)

Recency is coarse on purpose ("5 min ago", "2 days ago"): it is what matters to a reader, it
keeps inputs short, and the same context renders to the same text for a while, which lets
scores be cached.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from recsieve.errors import InvalidInputError

__all__ = ["ContextEvent", "render_context", "describe_age", "KIND_VERBS"]

#: How each event kind reads in the context text; an unknown kind is shown as it is.
KIND_VERBS: dict[str, str] = {
    "view": "viewed",
    "click": "clicked",
    "cart": "added to cart",
    "purchase": "purchased",
    "rating": "rated",
    "skip": "skipped",
    "dislike": "disliked",
}

_MINUTE = 60.0
_HOUR = 3600.0
_DAY = 86400.0
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ContextEvent:
    """One past event as the re-ranker sees it.

    ``title`` is the item's title, ``kind`` the event kind (``"click"``...), ``age_seconds``
    how long ago it happened (``None``: unknown, no recency is shown), ``text`` optional free
    text attached to the event (a review, a search query).
    """

    title: str
    kind: str
    age_seconds: float | None
    text: str | None = None


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'} ago"


def describe_age(seconds: float) -> str:
    """A coarse, human description of an age in seconds (floored to the unit shown).

    >>> [describe_age(s) for s in (0, 59, 60, 3599, 3600, 86399, 86400, 13 * 86400)]
    ['just now', 'just now', '1 min ago', '59 min ago', '1 hour ago', '23 hours ago', '1 day ago', '13 days ago']
    >>> [describe_age(s) for s in (14 * 86400, 60 * 86400, 365 * 86400, 800 * 86400)]
    ['2 weeks ago', '2 months ago', '1 year ago', '2 years ago']
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise InvalidInputError("age_seconds", seconds, "must be a finite number of seconds")
    if seconds < 0:
        raise InvalidInputError("age_seconds", seconds, "must not be negative (an event from the future)")
    if seconds < _MINUTE:
        return "just now"
    if seconds < _HOUR:
        return f"{int(seconds // _MINUTE)} min ago"
    if seconds < _DAY:
        return _plural(int(seconds // _HOUR), "hour")
    days = int(seconds // _DAY)
    if days < 14:
        return _plural(days, "day")
    if days < 60:
        return _plural(days // 7, "week")
    if days < 365:
        return _plural(days // 30, "month")
    return _plural(days // 365, "year")


def _clean(text: str, limit: int) -> str:
    """Collapse whitespace and cut to ``limit`` characters, marking a cut with ``...``."""
    text = _SPACE.sub(" ", text).strip()
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)].rstrip() + "..."


def _render_event(event: ContextEvent, max_title_chars: int) -> str:
    if not isinstance(event, ContextEvent):
        raise InvalidInputError("events", type(event).__name__, "must be ContextEvent objects")
    if not isinstance(event.title, str) or not isinstance(event.kind, str):
        raise InvalidInputError("event.title", event.title, "title and kind must be strings")
    out = f"{KIND_VERBS.get(event.kind, event.kind)} {_clean(event.title, max_title_chars)}"
    if event.age_seconds is not None:
        out += f" ({describe_age(event.age_seconds)})"
    if event.text:
        out += f': "{_clean(event.text, max_title_chars)}"'
    return out


def render_context(
    events: Sequence[ContextEvent],
    instruction: str | None = None,
    *,
    max_events: int = 10,
    max_chars: int = 512,
    max_title_chars: int = 64,
) -> str:
    """Render a user's context as the text the re-ranker reads.

    ``events`` are in the order they happened (oldest first, as a log holds them); the last
    ``max_events`` are shown, most recent first. ``instruction`` comes first as ``request:``.
    Titles and event texts longer than ``max_title_chars`` are cut; if the whole text would
    exceed ``max_chars``, the oldest shown events are dropped (then the instruction is cut).
    Deterministic: the same arguments always give the same text. No events and no
    instruction give ``""``.

    >>> render_context([ContextEvent("Casino (1995)", "purchase", 2 * 86400),
    ...                 ContextEvent("Heat (1995)", "click", 5.0)], "something lighter")
    'request: something lighter | recent: clicked Heat (1995) (just now); purchased Casino (1995) (2 days ago)'
    """
    for name, value, low in (("max_events", max_events, 0), ("max_chars", max_chars, 16),
                             ("max_title_chars", max_title_chars, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(name, value, f"must be an integer >= {low}")
    if instruction is not None and not isinstance(instruction, str):
        raise InvalidInputError("instruction", instruction, "must be a string or None")
    shown = list(events)[-max_events:] if max_events else []
    parts = [_render_event(e, max_title_chars) for e in reversed(shown)]
    head = ""
    if instruction is not None and instruction.strip():
        head = "request: " + _clean(instruction, max_chars - len("request: "))
    while True:
        recent = "recent: " + "; ".join(parts) if parts else ""
        text = " | ".join(p for p in (head, recent) if p)
        if len(text) <= max_chars or not parts:
            return text
        parts.pop()  # drop the oldest shown event
