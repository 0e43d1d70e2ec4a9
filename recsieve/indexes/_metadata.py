"""Helpers shared by the index implementations: id and metadata checks, columnar metadata
with vectorised filter evaluation, and a readers-writer lock.

Metadata values are scalars of three kinds: ``bool``, ``number`` (int or float) and
``string``. ``None`` and NaN mean *missing*. A field's kind is fixed by the first value an
index sees for it; a later value of another kind is refused (both backends behave alike, and
LanceDB needs one type per column).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    "check_ids",
    "check_k",
    "check_positive",
    "clean_metadata",
    "ColumnStore",
    "RWLock",
]

#: The kinds a metadata field can have.
KINDS = ("bool", "number", "string")


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


def read_index_meta(directory: str | Path, name: str, fmt: str, version: int, what: str) -> dict:
    """Read and check an index folder's description file (format marker and version)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise StoreError(f"index directory {directory} does not exist")
    meta = read_json(directory / name, f"{what} index metadata")
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CorruptStoreError(f"{directory / name} is not a recsieve {what} index description")
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


# --------------------------------------------------------------------------- columns

_NP_OPS = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _lit_kind(lit: Any) -> str:
    return (
        "bool" if isinstance(lit, bool) else "number" if isinstance(lit, (int, float)) else "string"
    )


class _Column:
    """One metadata field over positions: a present mask and values (float64, or string codes)."""

    def __init__(self, kind: str, size: int) -> None:
        self.kind = kind
        self.present = np.zeros(size, dtype=bool)
        if kind == "string":
            self.values = np.full(size, -1, dtype=np.int32)  # codes into vocab
            self.vocab: list[str] = []
            self.codes: dict[str, int] = {}
        else:
            self.values = np.zeros(size, dtype=np.float64)

    def encode(self, value: Any) -> float | int:
        if self.kind != "string":
            return float(value)
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.vocab)
            self.vocab.append(value)
        return code


class ColumnStore:
    """Columnar metadata over dense positions ``0..size-1``, with vectorised filter evaluation.

    Evaluation follows :meth:`recsieve.filters.Filter.matches` exactly (three-valued logic:
    a missing field or a literal of another kind is *unknown*).
    """

    def __init__(self) -> None:
        self.size = 0
        self.columns: dict[str, _Column] = {}

    @property
    def schema(self) -> dict[str, str]:
        """Field name -> kind."""
        return {name: col.kind for name, col in self.columns.items()}

    def append(self, rows: Sequence[Mapping[str, Any]], new_fields: Mapping[str, str]) -> None:
        """Append cleaned rows (from :func:`clean_metadata`) at positions ``size..size+len(rows)-1``."""
        start, n = self.size, len(rows)
        for name, kind in new_fields.items():
            self.columns[name] = _Column(kind, start)
        for col in self.columns.values():
            col.present = np.concatenate([col.present, np.zeros(n, dtype=bool)])
            col.values = np.concatenate(
                [col.values, np.full(n, -1 if col.kind == "string" else 0, col.values.dtype)]
            )
        for i, row in enumerate(rows):
            for name, value in row.items():
                col = self.columns[name]
                col.present[start + i] = True
                col.values[start + i] = col.encode(value)
        self.size = start + n

    def take(self, positions: np.ndarray) -> None:
        """Keep only ``positions`` (in that order), renumbered ``0..len(positions)-1``."""
        for col in self.columns.values():
            col.present = col.present[positions]
            col.values = col.values[positions]
        self.size = len(positions)

    def row(self, position: int) -> dict[str, Any]:
        """The metadata stored at one position."""
        out: dict[str, Any] = {}
        for name, col in self.columns.items():
            if col.present[position]:
                v = col.values[position]
                out[name] = (
                    col.vocab[v]
                    if col.kind == "string"
                    else bool(v)
                    if col.kind == "bool"
                    else float(v)
                )
        return out

    # ---- evaluation: every node gives (true mask, false mask); neither = unknown

    def evaluate(self, flt: Filter) -> np.ndarray:
        """Boolean mask over positions of the items ``flt`` matches."""
        return self._eval(flt.tree)[0]

    def _cmp(self, name: str, op: str, lit: Any) -> tuple[np.ndarray, np.ndarray]:
        col = self.columns.get(name)
        if col is None or col.kind != _lit_kind(lit):
            none = np.zeros(self.size, dtype=bool)
            return none, none
        if col.kind == "string":
            table = np.array([_NP_OPS[op](v, lit) for v in col.vocab] + [False], dtype=bool)
            hit = table[col.values]  # code -1 (absent) reads the trailing False
        else:
            hit = _NP_OPS[op](col.values, float(lit))
        return hit & col.present, ~hit & col.present

    def _eval(self, node: tuple) -> tuple[np.ndarray, np.ndarray]:
        kind = node[0]
        if kind == "cmp":
            return self._cmp(node[1], node[2], node[3])
        if kind == "in":
            true = np.zeros(self.size, dtype=bool)
            unknown = np.zeros(self.size, dtype=bool)
            for lit in node[2]:
                t, f = self._cmp(node[1], "==", lit)
                true |= t
                unknown |= ~t & ~f
            if not node[2]:
                col = self.columns.get(node[1])
                unknown = np.ones(self.size, dtype=bool) if col is None else ~col.present
            false = ~true & ~unknown
            return (false, true) if node[3] else (true, false)
        if kind == "not":
            t, f = self._eval(node[1])
            return f, t
        parts = [self._eval(n) for n in node[1]]
        trues = np.array([p[0] for p in parts])
        falses = np.array([p[1] for p in parts])
        if kind == "and":
            return trues.all(axis=0), falses.any(axis=0)
        return trues.any(axis=0), falses.all(axis=0)

    # ---- persistence as plain arrays (no pickle)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(json-able description, arrays)`` for saving."""
        desc: dict[str, Any] = {"size": self.size, "fields": []}
        arrays: dict[str, np.ndarray] = {}
        for i, (name, col) in enumerate(self.columns.items()):
            desc["fields"].append(
                {
                    "name": name,
                    "kind": col.kind,
                    "vocab": col.vocab if col.kind == "string" else None,
                }
            )
            arrays[f"meta{i}_present"] = col.present
            arrays[f"meta{i}_values"] = col.values
        return desc, arrays

    @classmethod
    def from_arrays(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ColumnStore:
        """Inverse of :meth:`to_arrays`; raises ``ValueError``/``KeyError``/``TypeError`` on bad input."""
        store = cls()
        store.size = int(desc["size"])
        for i, spec in enumerate(desc["fields"]):
            kind = spec["kind"]
            if kind not in KINDS or not isinstance(spec["name"], str):
                raise ValueError(f"bad metadata field {spec!r}")
            col = _Column(kind, 0)
            col.present = np.asarray(arrays[f"meta{i}_present"])
            col.values = np.asarray(arrays[f"meta{i}_values"])
            want = np.int32 if kind == "string" else np.float64
            if col.present.dtype != bool or col.values.dtype != want:
                raise ValueError(f"metadata field {spec['name']!r}: wrong array types")
            if col.present.shape != (store.size,) or col.values.shape != (store.size,):
                raise ValueError(f"metadata field {spec['name']!r}: wrong array sizes")
            if kind == "string":
                vocab = spec["vocab"]
                if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
                    raise ValueError(f"metadata field {spec['name']!r}: bad vocabulary")
                if col.values.size and (col.values.min() < -1 or col.values.max() >= len(vocab)):
                    raise ValueError(f"metadata field {spec['name']!r}: codes out of range")
                col.vocab = vocab
                col.codes = {v: j for j, v in enumerate(vocab)}
            store.columns[spec["name"]] = col
        return store


# --------------------------------------------------------------------------- locking


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared."""
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
