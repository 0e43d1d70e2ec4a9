"""Columnar metadata over dense positions, with vectorised filter evaluation.

:class:`ColumnStore` keeps one column per metadata field (a present mask and float64
values, or int32 codes into a vocabulary for strings) and evaluates a
:class:`~recsieve.filters.Filter` over all positions at once, with the three-valued logic of
:meth:`~recsieve.filters.Filter.matches`. The FAISS index filters through it; LanceDB
pushes filters down as SQL instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recsieve.filters import Filter
from recsieve.indexes.checks import KINDS, literal_kind

__all__ = ["ColumnStore"]

_NP_OPS = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


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
        """Append cleaned rows (from ``checks.clean_metadata``) at positions ``size..size+len(rows)-1``."""
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
        if col is None or col.kind != literal_kind(lit):
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
