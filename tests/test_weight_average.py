"""The weights' moving average (recsieve.training.averaging) and training that keeps it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsieve.context import ContextSettings
from recsieve.errors import InvalidInputError
from recsieve.training.averaging import WeightAverage
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.validation import ndcg10


def test_average_follows_its_recurrence_and_the_live_weights_come_back():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    avg = WeightAverage(lin.parameters(), 0.5)
    expect = [p.detach().clone() for p in lin.parameters()]
    for k in range(1, 6):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        d = min(0.5, (1 + k) / (10 + k))  # warmed up: the first steps follow the weights closely
        expect = [d * e + (1 - d) * p.detach() for e, p in zip(expect, lin.parameters(), strict=True)]
    live = [p.detach().clone() for p in lin.parameters()]
    with avg.swapped():
        for p, e in zip(lin.parameters(), expect, strict=True):
            torch.testing.assert_close(p.detach(), e)
    for p, w in zip(lin.parameters(), live, strict=True):
        assert torch.equal(p.detach(), w)  # training goes on from the live weights
    avg.keep()
    for p, e in zip(lin.parameters(), expect, strict=True):
        torch.testing.assert_close(p.detach(), e)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, True, "0.99"])
def test_a_decay_outside_the_open_interval_is_refused_by_name(bad):
    with pytest.raises(InvalidInputError, match="ema"):
        WeightAverage([], bad)
    if bad != 0.0:  # TrainConfig's 0: no average
        with pytest.raises(InvalidInputError, match="ema"):
            TrainConfig(ema=bad)


def _cycles(n_users=80, n_items=15, length=12, seed=0):
    rng = np.random.default_rng(seed)
    return [((s + np.arange(length) * rng.integers(1, 3)) % n_items).astype(np.int64)
            for s in range(n_users)], n_items


def test_training_validates_the_average_and_keeps_it():
    """With ``ema`` the held-out figure that picks the epoch is the average's (the live weights'
    is recorded beside it), and the model that comes back scores the held-out users as the
    best epoch's average did."""
    seqs, n = _cycles()
    settings = ContextSettings(n_warm=n, text_dim=0, dim=16, heads=2, max_len=10, dropout=0.0)
    cfg = TrainConfig(epochs=6, lr=5e-3, batch_size=16, bf16=False, patience=None, threads=1, ema=0.8)
    model, hist = fit_context_model(seqs, n, None, settings=settings, config=cfg)
    live, kept = hist["valid_ndcg@10_live"], hist["valid_ndcg@10"]
    assert hist["valid_users"] == len(seqs) and len(live) == len(kept) == 6
    assert live != kept  # the average is another model than the live weights
    assert hist["best_valid_ndcg10"] == max(kept)
    ctx = [s[:-1] for s in seqs]  # every user held out: the last training item is the target
    tgt = np.array([s[-1] for s in seqs])
    nd, _ = ndcg10(model.score_items(ctx), tgt, ctx)
    assert nd == pytest.approx(hist["best_valid_ndcg10"], abs=1e-4)
