"""The exceptions recsieve raises on purpose.

Every error that comes from bad input names the field and the value that were
wrong. Errors subclass the matching builtin too (``ValueError``, ``KeyError``),
so callers that catch the builtins keep working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RecsieveError",
    "InvalidInputError",
    "DuplicateIdError",
    "UnknownItemError",
    "FilterSyntaxError",
    "StoreError",
    "CorruptStoreError",
    "IncompatibleVersionError",
    "MissingDependencyError",
    "ModelNotTrainedError",
    "ClusterUnavailableError",
]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecsieveError(Exception):
    """Base class of every error recsieve raises on purpose."""


class InvalidInputError(RecsieveError, ValueError):
    """A value given to recsieve is not acceptable.

    ``field`` names what was wrong (``"vectors"``, ``"items[3].id"``, ``"line 12: price"``),
    ``value`` is the offending value (shortened in the message).
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={_short(value)}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (a Ray worker's error)
        return (self.__class__, (self.field, self.value, self.reason))


class DuplicateIdError(InvalidInputError):
    """The same id appears twice where ids must be unique."""


class FilterSyntaxError(InvalidInputError):
    """A filter expression could not be parsed or uses an unsupported construct."""


class UnknownItemError(RecsieveError, KeyError):
    """An item id that the catalog does not hold."""

    def __init__(self, field: str, value: Any) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={_short(value)}: no such item in the catalog")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.field, self.value))

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class StoreError(RecsieveError):
    """An engine or index directory cannot be read or written."""


class CorruptStoreError(StoreError):
    """A file in a directory is truncated, corrupted or half-written."""


class IncompatibleVersionError(StoreError):
    """A directory was written by a format version this recsieve cannot read."""


class MissingDependencyError(RecsieveError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class ModelNotTrainedError(RecsieveError):
    """A model is needed that has not been trained (recsieve never ships an untrained head)."""


class ClusterUnavailableError(RecsieveError, ConnectionError):
    """A distributed engine (a Ray cluster) does not answer at the address given; the message
    names the address and what to check."""
