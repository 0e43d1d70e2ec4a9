"""Deprecated alias of :mod:`recsieve.training` (kept for one release; import from there).

Nothing in the engine imports this module: it exists only so that old imports keep working.
"""

from __future__ import annotations

import warnings

from recsieve.training.cross_encoder import train_engine_reranker
from recsieve.training.examples import (
    RankingGroup,
    engine_examples,
    engine_sequences,
    groups_for,
    load_replay,
    observe_steps,
    ranking_groups,
    save_replay,
)
from recsieve.training.head import fit_blend, fit_head, train_engine_ranker

__all__ = ["engine_sequences", "engine_examples", "ranking_groups", "train_engine_reranker", "train_engine_ranker",
           "RankingGroup", "groups_for", "observe_steps", "save_replay", "load_replay", "fit_blend", "fit_head"]

warnings.warn("recsieve.engine.train moved to recsieve.training; this alias goes in the next release",
              DeprecationWarning, stacklevel=2)
