"""Checks shared by the index implementations: ids, batches, searches, settings, metadata.

Metadata values are scalars of three kinds (:data:`KINDS`): ``bool``, ``number`` (int or
float) and ``string``. ``None`` and NaN mean *missing*. A field's kind is fixed by the first
value an index sees for it; a later value of another kind is refused (both backends behave
alike, and LanceDB needs one type per column). :func:`kind_of` tells a value's kind,
:func:`literal_kind` a filter literal's; :func:`clean_metadata` checks a batch of rows.
Each index folder is described by :data:`META_FILE`, read back by :func:`read_index_meta`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import (
    CorruptStoreError,
    DuplicateIdError,
    IncompatibleVersionError,
    InvalidInputError,
    StoreError,
)
from recsieve.filters import Filter
from recsieve.storage import read_json
from recsieve.vectors import as_matrix

__all__ = [
    "KINDS",
    "META_FILE",
    "check_ids",
    "check_upsert",
    "check_search",
    "check_k",
    "check_positive",
    "read_index_meta",
    "kind_of",
    "literal_kind",
    "clean_metadata",
]

#: The kinds a metadata field can have.
KINDS = ("bool", "number", "string")
#: Name of the description file (format, version, settings) in an index folder.
META_FILE = "meta.json"


def check_ids(ids: object, field: str = "ids", n: int | None = None) -> np.ndarray:
    """Coerce ``ids`` to a 1-D int64 array of non-negative ids (``n`` = expected length)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        arr = arr.reshape(0).astype(np.int64)
    if arr.ndim != 1:
        raise InvalidInputError(field, arr.shape, "ids must be a 1-D sequence")
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(field, str(arr.dtype), "ids must be integers (int64 catalog rows)")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidInputError(field, int(arr.max()), "id does not fit in int64")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise InvalidInputError(field, int(arr.min()), "ids must be non-negative")
    if n is not None and arr.shape[0] != n:
        raise InvalidInputError(field, arr.shape[0], f"expected {n} ids, one per vector")
    return arr


def check_upsert(ids: object, vectors: object, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an upsert batch: ``(ids int64 (n,), vectors float32 (n, dim))``, ids unique."""
    vecs = as_matrix(vectors, dim, "vectors")
    arr = check_ids(ids, "ids", vecs.shape[0])
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dups = uniq[counts > 1][:5].tolist()
        raise DuplicateIdError("ids", dups, "the same id appears more than once in one upsert")
    return arr, vecs


def check_search(queries: object, k: object, filter: object, exclude: object, dim: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Validate a search call: ``(queries float32 (n, dim), k, exclude ids int64)``."""
    q = as_matrix(queries, dim, "queries")
    k = check_k(k)
    if filter is not None and not isinstance(filter, Filter):
        raise InvalidInputError("filter", filter, "must be a Filter (see recsieve.filters.parse_filter)")
    return q, k, check_ids(exclude if exclude is not None else [], "exclude")


def read_index_meta(directory: str | Path, fmt: str, version: int, what: str) -> dict:
    """Read and check an index folder's description file :data:`META_FILE` (format marker and version)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise StoreError(f"index directory {directory} does not exist")
    meta = read_json(directory / META_FILE, f"{what} index metadata")
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CorruptStoreError(f"{directory / META_FILE} is not a recsieve {what} index description")
    if meta.get("version") != version:
        raise IncompatibleVersionError(f"{directory}: {what} index format {meta.get('version')!r}, expected {version}")
    return meta


def check_k(k: object) -> int:
    """Validate the number of results asked for."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidInputError("k", k, "must be a positive integer")
    return int(k)


def check_positive(name: str, value: Any, allow_none: bool = False) -> Any:
    """Validate a positive integer setting (``None`` passes when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(name, value, "must be a positive integer")
    return int(value)


def kind_of(value: Any) -> str | None:
    """The kind of a metadata value, ``None`` for missing; raises ``TypeError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return None if isinstance(value, (float, np.floating)) and math.isnan(value) else "number"
    if isinstance(value, str):
        return "string"
    raise TypeError(type(value).__name__)


def literal_kind(lit: Any) -> str:
    """The kind of a filter literal (``bool``, ``number`` or ``string``), to match against a field's kind."""
    return (
        "bool" if isinstance(lit, bool) else "number" if isinstance(lit, (int, float)) else "string"
    )


def clean_metadata(
    metadata: Sequence[Mapping[str, Any]] | None, n: int, schema: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Check ``n`` metadata rows against the known field kinds ``schema``.

    Returns the rows as plain dicts of Python scalars (missing values dropped) and the
    fields seen for the first time with their kinds. Raises :class:`InvalidInputError`
    naming ``metadata[i].field`` for a non-scalar value or a kind that contradicts ``schema``.
    """
    if metadata is None:
        return [{} for _ in range(n)], {}
    if isinstance(metadata, (Mapping, str, bytes)) or len(metadata) != n:
        got = (
            type(metadata).__name__
            if isinstance(metadata, (Mapping, str, bytes))
            else len(metadata)
        )
        raise InvalidInputError("metadata", got, f"expected a sequence of {n} mappings, one per id")
    rows: list[dict[str, Any]] = []
    new: dict[str, str] = {}
    for i, meta in enumerate(metadata):
        if meta is None:
            rows.append({})
            continue
        if not isinstance(meta, Mapping):
            raise InvalidInputError(
                f"metadata[{i}]", type(meta).__name__, "must be a mapping of field -> scalar"
            )
        row: dict[str, Any] = {}
        for key, value in meta.items():
            if (
                not isinstance(key, str)
                or not key.isidentifier()
                or key in ("id", "vector")
                or key.startswith("_")
            ):
                raise InvalidInputError(
                    f"metadata[{i}]",
                    key,
                    "field names must be identifiers, not 'id'/'vector', not starting with '_'",
                )
            try:
                kind = kind_of(value)
            except TypeError:
                raise InvalidInputError(
                    f"metadata[{i}].{key}", value, "metadata values must be str, int, float or bool"
                ) from None
            if kind is None:
                continue
            known = schema.get(key) or new.setdefault(key, kind)
            if known != kind:
                raise InvalidInputError(
                    f"metadata[{i}].{key}",
                    value,
                    f"field {key!r} holds {known} values in this index, got {kind}",
                )
            row[key] = (
                bool(value) if kind == "bool" else float(value) if kind == "number" else value
            )
        rows.append(row)
    return rows, new
