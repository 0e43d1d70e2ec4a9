"""The context model used at serving time (torch modules + a numpy-in/numpy-out API).

- :class:`ItemTower`: item token = adapter(frozen text vector) + ID residual (warm items only).
- :class:`ContextEncoder`: causal transformer over the user's last events -> user vector.
- :class:`CandidateScorer`: the fine sieve's reader; each candidate attends to the context only.
- :class:`ContextModel`: the bundle with ``set_items``/``add_items``/``encode``/``score_items``/
  ``score_candidates`` and ``save``/``load`` of a checksummed model folder.

Training lives in :mod:`recsieve.training.context_model`; nothing here imports it.
"""

from recsieve.context.model import ContextModel, ContextSettings
from recsieve.context.modules import (
    CandidateScorer,
    ContextEncoder,
    ItemTower,
    gap_buckets,
)

#: The design's name for the fine sieve's reader.
CrossEncoder = CandidateScorer

__all__ = [
    "CandidateScorer",
    "ContextEncoder",
    "ContextModel",
    "ContextSettings",
    "CrossEncoder",
    "ItemTower",
    "gap_buckets",
]
