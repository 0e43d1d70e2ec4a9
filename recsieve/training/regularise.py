"""More dropout where the context encoder over-fits, chosen on its held-out users.

The encoder's dropout (0.1, the published SASRec+ recipe's) suits a dense log such as ML-1M,
where training runs out of its time budget while the held-out NDCG@10 still rises. On a sparse
log (Amazon Scientific: 8,442 users, 4,385 items, short histories) the held-out NDCG@10 peaks
within a few epochs and patience ends training long before the budget: the model over-fits.
:func:`fit_regularised` then trains again with the next dropout of a ladder, on the same
sequences, the same held-out users (the draw depends on the seed and the sequences only) and
the time left, and keeps whichever model scores the higher held-out NDCG@10, climbing while each
step improves it and while another run of the same length still fits the budget. A run that
used its budget (or its epochs) is not over-fitting, so nothing more is tried: where training
is budget-bound, the result is the first run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from recsieve.context.model import ContextModel, ContextSettings
from recsieve.training.context_model import TrainConfig, fit_context_model

__all__ = ["DROPOUT_LADDER", "fit_regularised"]

#: Dropouts tried in turn after a run that stopped on patience (each above the settings' own).
DROPOUT_LADDER = (0.3, 0.5)

Fit = Callable[..., tuple[ContextModel, dict[str, Any]]]


def fit_regularised(
    sequences: Sequence[np.ndarray],
    n_items: int,
    text_vectors: np.ndarray | None,
    *,
    settings: ContextSettings,
    config: TrainConfig,
    ladder: Sequence[float] = DROPOUT_LADDER,
    fit: Fit = fit_context_model,
) -> tuple[ContextModel, dict[str, Any]]:
    """Train with ``fit`` (same arguments as :func:`~recsieve.training.context_model.fit_context_model`),
    then up the dropout ``ladder`` while the last run stopped on patience, kept the held-out
    NDCG@10 rising and another run of its length fits ``config.budget_s`` (the whole ladder's
    budget). Returns the best model by held-out NDCG@10 and its history, with ``"dropout"`` (the
    chosen one) and ``"dropout_runs"`` (every run: dropout, best held-out NDCG@10, epochs,
    seconds, why it stopped)."""
    start = time.perf_counter()
    model, hist = fit(sequences, n_items, text_vectors, settings=settings, config=config)
    best, chosen = (model, hist), settings.dropout
    runs = [_run(settings.dropout, hist)]
    last = hist
    for p in ladder:
        if p <= settings.dropout:
            continue
        score = last.get("best_valid_ndcg10")
        if last.get("stopped") != "patience" or score is None:
            break
        left = None if config.budget_s is None else config.budget_s - (time.perf_counter() - start)
        if left is not None and left < last["seconds"]:
            break
        model, last = fit(sequences, n_items, text_vectors, settings=replace(settings, dropout=p),
                          config=replace(config, budget_s=left))
        runs.append(_run(p, last))
        if (last.get("best_valid_ndcg10") or -1.0) <= best[1]["best_valid_ndcg10"]:
            break
        best, chosen = (model, last), p
    model, hist = best
    return model, {**hist, "dropout": chosen, "dropout_runs": runs}


def _run(dropout: float, hist: dict[str, Any]) -> dict[str, Any]:
    return {"dropout": dropout, "best_valid_ndcg10": hist.get("best_valid_ndcg10"), "epochs": hist.get("epochs"),
            "seconds": hist.get("seconds"), "stopped": hist.get("stopped")}
