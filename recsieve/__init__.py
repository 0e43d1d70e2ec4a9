"""recsieve: real-time two-stage recommendation.

A vector index of language-model item embeddings recalls candidates for a user; a
cross-encoder re-ranker that reads the user's real-time context orders them.

The public names below are imported on first use, so ``import recsieve`` stays cheap
(no torch, FAISS or LanceDB until an engine needs them).

>>> from recsieve import EngineConfig
>>> EngineConfig().backend
'faiss'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "recsieve.engine.engine",
    "UpsertReport": "recsieve.engine.engine",
    "build_index": "recsieve.engine.engine",
    "EngineConfig": "recsieve.engine.config",
    "learn": "recsieve.training.learn",
    "Learner": "recsieve.training.learn",
    "Item": "recsieve.types",
    "Event": "recsieve.types",
    "Recommendation": "recsieve.types",
    "Candidates": "recsieve.types",
}

__all__ = [
    "Engine",
    "UpsertReport",
    "build_index",
    "EngineConfig",
    "learn",
    "Learner",
    "Item",
    "Event",
    "Recommendation",
    "Candidates",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine, UpsertReport, build_index
    from recsieve.training.learn import Learner, learn
    from recsieve.types import Candidates, Event, Item, Recommendation


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'recsieve' has no attribute {name!r}")
