"""Checks of the facade's arguments: each raises :class:`~recsieve.errors.InvalidInputError` (or
:class:`~recsieve.errors.UnknownItemError`) naming the field and the value, and changes nothing."""

from __future__ import annotations

import time

import numpy as np

from recsieve.catalog import Catalog
from recsieve.engine.pipeline import MAX_INSTRUCTION
from recsieve.errors import InvalidInputError, UnknownItemError
from recsieve.types import Event

__all__ = ["MAX_K", "FUTURE_SLACK_S", "check_k", "check_user", "check_event"]

#: Largest ``k`` a request may ask for.
MAX_K = 10_000
#: Events may carry timestamps up to this far in the future (clock skew between hosts).
FUTURE_SLACK_S = 86_400.0


def check_k(k: object) -> int:
    """``k`` as an int between 1 and :data:`MAX_K`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError("k", k, "must be an integer")
    if not 1 <= int(k) <= MAX_K:
        raise InvalidInputError("k", k, f"must be between 1 and {MAX_K}")
    return int(k)


def check_user(user_id: object) -> str:
    """A non-empty user id string."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInputError("user_id", user_id, "must be a non-empty string")
    return user_id


def check_event(event: object, catalog: Catalog, field: str = "event", now: float | None = None) -> float:
    """Raise what recording ``event`` would raise (naming ``field``); return its timestamp.

    An :class:`Event`, of an item in ``catalog``, at most a day in the future, with ``text``
    either ``None`` or non-empty and at most 2,000 characters.
    """
    now = time.time() if now is None else now
    if not isinstance(event, Event):
        raise InvalidInputError(field, type(event).__name__, "expected a recsieve.Event")
    if event.item_id not in catalog:
        raise UnknownItemError(f"{field}.item_id", event.item_id)
    ts = now if event.ts is None else float(event.ts)
    if ts > now + FUTURE_SLACK_S:
        raise InvalidInputError(f"{field}.ts", event.ts, "more than a day in the future")
    if event.text is not None:
        if not isinstance(event.text, str) or not event.text.strip():
            raise InvalidInputError(f"{field}.text", event.text, "must be non-empty text when given (or None)")
        if len(event.text) > MAX_INSTRUCTION:
            raise InvalidInputError(f"{field}.text", event.text[:40], f"longer than {MAX_INSTRUCTION} characters")
    return ts
