"""Each catalog row's content hash: the hash of the text its vector was embedded from.

Upserts compare it to skip re-embedding an unchanged text; the score cache keys re-ranker scores
by it. A snapshot stores the hashes as one array indexed by row (``hashes.npy``, fixed-width ASCII,
empty where a row has none) that opening memory-maps, so a million rows cost nothing until asked
for; hashes set since live in a dict over it. Snapshots written before keep ``hashes.json``
(``{row: hash}``), read whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recsieve.errors import CorruptStoreError

__all__ = ["HASHES_FILE", "RowHashes"]

#: The file a snapshot keeps the hashes in.
HASHES_FILE = "hashes.npy"


class RowHashes:
    """row -> content hash (a str), over a snapshot's array plus the hashes set since.

    Writers are serialised by the caller; a reader sees either the old or the new hash of a row.
    """

    def __init__(self, base: np.ndarray | None = None) -> None:
        self._base = base if base is not None else np.zeros(0, "S1")
        self._changed: dict[int, str] = {}

    def get(self, row: int, default: str | None = None) -> str | None:
        """The hash of ``row``, else ``default``."""
        found = self._changed.get(row)
        if found is not None:
            return found
        if 0 <= row < len(self._base):
            raw = self._base[row]
            if raw:
                return raw.decode("ascii")
        return default

    def __setitem__(self, row: int, value: str) -> None:
        self._changed[int(row)] = value

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def items(self) -> Iterator[tuple[int, str]]:
        """(row, hash) of every row that has one, ascending."""
        rows = set(self._changed) | set(np.flatnonzero(self._base != b"").tolist())
        for row in sorted(rows):
            yield row, self.get(row)  # type: ignore[misc]

    def save(self, path: Path, n_rows: int) -> None:
        """Write :data:`HASHES_FILE` for rows ``0..n_rows-1`` (the caller makes it atomic)."""
        width = max([self._base.dtype.itemsize, 1, *(len(h) for h in self._changed.values())])
        out = np.zeros(n_rows, f"S{width}")
        keep = min(n_rows, len(self._base))
        out[:keep] = self._base[:keep]
        for row, h in self._changed.items():
            if row < n_rows:
                out[row] = h.encode("ascii")
        np.save(path, out, allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> RowHashes:
        """The hashes a snapshot saved at ``path`` (:data:`HASHES_FILE`, memory-mapped, or the older
        ``hashes.json``); an unreadable file raises :class:`CorruptStoreError` naming it."""
        if path.suffix == ".json":
            try:
                raw = json.loads(path.read_text("utf-8"))
                hashes = cls()
                for k, v in raw.items():
                    hashes[int(k)] = str(v)
            except (OSError, ValueError, AttributeError) as exc:
                raise CorruptStoreError(f"{path}: unreadable content hashes ({exc})") from None
            return hashes
        try:
            base = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CorruptStoreError(f"{path}: unreadable content hashes ({exc})") from None
        if base.ndim != 1 or base.dtype.kind != "S":
            raise CorruptStoreError(f"{path}: content hashes of {base.dtype} {base.shape}, expected fixed-width bytes (n,)")
        return cls(base)
