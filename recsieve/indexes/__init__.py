"""Vector indexes: the ``VectorIndex`` protocol and its FAISS and LanceDB implementations.

The implementations are imported on first use (``recsieve.indexes.FaissIndex``), so importing
this package needs neither faiss nor lancedb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recsieve.indexes.base import Metadata, SearchParams, VectorIndex

if TYPE_CHECKING:
    from recsieve.indexes.faiss_index import FaissIndex
    from recsieve.indexes.lance_index import LanceIndex

__all__ = ["VectorIndex", "SearchParams", "Metadata", "FaissIndex", "LanceIndex"]

_LAZY = {"FaissIndex": "recsieve.indexes.faiss_index", "LanceIndex": "recsieve.indexes.lance_index"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
