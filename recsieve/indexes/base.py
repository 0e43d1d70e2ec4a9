"""The ``VectorIndex`` protocol: the coarse sieve's storage and search.

Ids are the catalog's int64 rows. Vectors are L2-normalised float32 ``(n, dim)``, so
scores are inner products (cosine). ``search`` returns ``(scores float32 (n, k),
ids int64 (n, k))``, best first, padded with ``-1`` ids and ``-inf`` scores where fewer
than ``k`` items qualify.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.filters import Filter

__all__ = ["VectorIndex", "SearchParams", "Metadata"]

Metadata = Mapping[str, Any]


@dataclass(frozen=True)
class SearchParams:
    """Per-call search settings; ``None`` keeps the index's default. Never mutates the index.

    ``ef_search``: HNSW beam width; ``nprobe``: IVF lists probed; ``refine_factor``: LanceDB
    re-ranks ``k * refine_factor`` PQ results with exact distances.
    """

    ef_search: int | None = None
    nprobe: int | None = None
    refine_factor: int | None = None


class VectorIndex(ABC):
    """Storage and nearest-neighbour search of item vectors, with metadata filters.

    Implementations live one per module (``faiss_index.py``, ``lance_index.py``) and pass
    the same contract test suite (``tests/test_index_contract.py``).
    """

    #: Dimension of the vectors.
    dim: int

    @abstractmethod
    def upsert(
        self, ids: np.ndarray | Sequence[int], vectors: np.ndarray, metadata: Sequence[Metadata] | None = None
    ) -> None:
        """Insert or replace the vectors (and filterable metadata) of ``ids``.

        Visible to ``search`` as soon as this returns. Duplicate ids in one call, a wrong
        dimension or a non-finite value raise :class:`~recsieve.errors.InvalidInputError`
        and change nothing.
        """

    @abstractmethod
    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored); return how many were removed."""

    @abstractmethod
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filter: Filter | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids per query among items matching ``filter`` and not in ``exclude``."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of live (not removed) items."""

    @abstractmethod
    def __contains__(self, item_id: object) -> bool:
        """Whether ``item_id`` is live in the index."""

    def close(self) -> None:
        """Stop background work (a compaction in flight), waiting for it to end; the index stays
        usable. Implementations without background work have nothing to stop."""
        return None

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the index into the empty folder ``directory`` (the caller makes it atomic)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> VectorIndex:
        """Read an index written by :meth:`save`; a corrupted folder raises ``StoreError``."""
