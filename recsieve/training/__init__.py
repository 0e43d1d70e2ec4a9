"""Offline and continual training on a small public engine API.

- :mod:`recsieve.training.examples`: step sequences and ranking examples from an engine's log;
- :mod:`recsieve.training.head`: the ranking head (and the cross-encoder's blend weight);
- :mod:`recsieve.training.cross_encoder`: fine-tuning the word-level MiniLM cross-encoder;
- :mod:`recsieve.training.learn`: continual updates from the event stream (``learn``, ``Learner``);
- :mod:`recsieve.training.context_model`: the context model's item tower and context encoder;
- :mod:`recsieve.training.scorer`: the context model's candidate scorer (the fine sieve's cross-encoder);
- :mod:`recsieve.training.model`: ``recsieve train``: the context model, then the head that stacks it.

Arrows point down: training imports the engine, never the other way round.
"""

from __future__ import annotations

from recsieve.training.cross_encoder import train_engine_reranker
from recsieve.training.examples import (
    RankingGroup,
    engine_examples,
    engine_sequences,
    ranking_groups,
)
from recsieve.training.head import fit_blend, fit_head, train_engine_ranker
from recsieve.training.learn import Learner, learn
from recsieve.training.model import train_engine

__all__ = [
    "Learner",
    "RankingGroup",
    "engine_examples",
    "engine_sequences",
    "fit_blend",
    "fit_head",
    "learn",
    "ranking_groups",
    "train_engine",
    "train_engine_ranker",
    "train_engine_reranker",
]
