"""Offline evaluation: datasets, the leave-one-out protocol, full-ranking metrics, baselines.

>>> from recsieve.evaluation import evaluate, load_dataset, Popularity, ItemKNN   # doctest: +SKIP
>>> report = evaluate(load_dataset("ml-1m", "data/ml-1m"), [Popularity(), ItemKNN()])  # doctest: +SKIP

Names are imported on first use, so importing this package does not load torch (only
:class:`SASRec` needs it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Dataset": "recsieve.evaluation.datasets",
    "DATASETS": "recsieve.evaluation.datasets",
    "load_dataset": "recsieve.evaluation.datasets",
    "load_ml1m": "recsieve.evaluation.datasets",
    "load_ml100k": "recsieve.evaluation.datasets",
    "load_amazon": "recsieve.evaluation.datasets",
    "load_amazon_scientific": "recsieve.evaluation.datasets",
    "load_custom": "recsieve.evaluation.datasets",
    "write_custom": "recsieve.evaluation.datasets",
    "Split": "recsieve.evaluation.protocol",
    "leave_one_out": "recsieve.evaluation.protocol",
    "training_sequences": "recsieve.evaluation.protocol",
    "rank_metrics": "recsieve.evaluation.metrics",
    "Scorer": "recsieve.evaluation.baselines",
    "CandidateScorer": "recsieve.evaluation.baselines",
    "Popularity": "recsieve.evaluation.baselines",
    "ItemKNN": "recsieve.evaluation.baselines",
    "Transitions": "recsieve.evaluation.baselines",
    "SASRec": "recsieve.evaluation.sasrec",
    "evaluate": "recsieve.evaluation.harness",
    "format_table": "recsieve.evaluation.harness",
}

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_ml1m",
    "load_ml100k",
    "load_amazon",
    "load_amazon_scientific",
    "load_custom",
    "write_custom",
    "Split",
    "leave_one_out",
    "training_sequences",
    "rank_metrics",
    "Scorer",
    "CandidateScorer",
    "Popularity",
    "ItemKNN",
    "Transitions",
    "SASRec",
    "evaluate",
    "format_table",
]

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.evaluation.baselines import (
        CandidateScorer,
        ItemKNN,
        Popularity,
        Scorer,
        Transitions,
    )
    from recsieve.evaluation.datasets import (
        DATASETS,
        Dataset,
        load_amazon,
        load_amazon_scientific,
        load_custom,
        load_dataset,
        load_ml1m,
        load_ml100k,
        write_custom,
    )
    from recsieve.evaluation.harness import evaluate, format_table
    from recsieve.evaluation.metrics import rank_metrics
    from recsieve.evaluation.protocol import Split, leave_one_out, training_sequences
    from recsieve.evaluation.sasrec import SASRec


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'recsieve.evaluation' has no attribute {name!r}")
