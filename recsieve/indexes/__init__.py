"""Vector indexes: the ``VectorIndex`` protocol and its FAISS and LanceDB implementations."""

from recsieve.indexes.base import Metadata, SearchParams, VectorIndex

__all__ = ["VectorIndex", "SearchParams", "Metadata"]
