"""The vector index backends an engine can use: the only place they are named."""

from __future__ import annotations

from pathlib import Path

from recsieve.engine.config import EngineConfig
from recsieve.indexes.base import VectorIndex

__all__ = ["new_index", "load_index"]


def _faiss_new(config: EngineConfig, dim: int) -> VectorIndex:
    from recsieve.indexes.faiss_index import FaissIndex

    return FaissIndex(dim, kind=config.index, ef_search=config.ef_search, nprobe=config.nprobe)


def _faiss_load(folder: Path) -> VectorIndex:
    from recsieve.indexes.faiss_index import FaissIndex

    return FaissIndex.load(folder)


def _lance_new(config: EngineConfig, dim: int) -> VectorIndex:
    from recsieve.indexes.lance_index import LanceIndex

    kinds = {"flat": "none", "hnsw": "hnsw_sq", "ivf": "ivf_pq"}
    return LanceIndex(dim, index_type=kinds[config.index])


def _lance_load(folder: Path) -> VectorIndex:
    from recsieve.indexes.lance_index import LanceIndex

    return LanceIndex.load(folder)


#: backend name -> (make a new index, load a saved one). The only place backends are named.
_BACKENDS = {"faiss": (_faiss_new, _faiss_load), "lance": (_lance_new, _lance_load)}


def new_index(config: EngineConfig, dim: int) -> VectorIndex:
    """An empty vector index of the config's backend and kind."""
    return _BACKENDS[config.backend][0](config, dim)


def load_index(config: EngineConfig, folder: Path) -> VectorIndex:
    """The vector index saved in ``folder`` by the config's backend."""
    return _BACKENDS[config.backend][1](folder)
