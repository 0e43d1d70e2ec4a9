"""More dropout where the context encoder over-fits (recsieve.training.regularise), toy sizes."""

from __future__ import annotations

import numpy as np
import pytest

from recsieve.context import ContextSettings
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.regularise import fit_regularised


def _noisy(seed: int = 0) -> tuple[list[np.ndarray], int]:
    """Short random sequences over 30 items with a weak pattern: a toy encoder over-fits them
    within a few epochs, so early stopping ends training."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(150):
        start = int(rng.integers(0, 30))
        seqs.append(np.array([(start + k * int(rng.integers(1, 3))) % 30 for k in range(6)], np.int64))
    return seqs, 30


def _config(**kw) -> TrainConfig:
    base = dict(epochs=60, lr=2e-2, batch_size=16, bf16=False, valid_users=30, patience=2, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_an_over_fitting_encoder_is_retrained_with_more_dropout_and_the_best_kept():
    seqs, n = _noisy()
    settings = ContextSettings(n_warm=n, text_dim=0, dim=16, max_len=6, dropout=0.1)
    model, hist = fit_regularised(seqs, n, None, settings=settings, config=_config(), ladder=(0.3, 0.5))
    runs = hist["dropout_runs"]
    assert runs[0]["dropout"] == 0.1 and runs[0]["stopped"] == "patience"
    assert len(runs) >= 2 and runs[1]["dropout"] == 0.3  # patience stopped it: the ladder ran
    assert [r["dropout"] for r in runs] == [0.1, 0.3, 0.5][: len(runs)]
    best = max(runs, key=lambda r: r["best_valid_ndcg10"])
    assert hist["dropout"] == best["dropout"] and hist["best_valid_ndcg10"] == best["best_valid_ndcg10"]
    # climbing stops at the first run that does not improve on the best so far
    scores = [r["best_valid_ndcg10"] for r in runs]
    assert all(scores[i] > max(scores[:i]) for i in range(1, len(scores) - 1))
    # the model returned is the chosen run's: retraining that run alone gives its scores
    again, h = fit_context_model(seqs, n, None, settings=ContextSettings(n_warm=n, text_dim=0, dim=16, max_len=6,
                                                                        dropout=hist["dropout"]), config=_config())
    assert h["best_valid_ndcg10"] == hist["best_valid_ndcg10"]
    probe = [s[:4] for s in seqs[:10]]
    np.testing.assert_allclose(model.score_items(probe), again.score_items(probe), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["no ladder", "no patience", "budget spent"])
def test_no_second_run_unless_the_first_stopped_on_patience_with_budget_left(how):
    seqs, n = _noisy()
    settings = ContextSettings(n_warm=n, text_dim=0, dim=16, max_len=6, dropout=0.1)
    ladder, config = (0.3,), _config()
    if how == "no ladder":
        ladder = ()
    elif how == "no patience":
        config = _config(patience=None, epochs=3)  # runs its epochs: not over-fitting by this rule
    else:
        config = _config(budget_s=1e-3)  # the first run ends on its budget
    _, hist = fit_regularised(seqs, n, None, settings=settings, config=config, ladder=ladder)
    assert len(hist["dropout_runs"]) == 1 and hist["dropout"] == 0.1
    assert hist["stopped"] == {"no ladder": "patience", "no patience": "epochs", "budget spent": "budget"}[how]
