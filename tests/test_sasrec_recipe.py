"""The SASRec yardstick keeps the published architecture (ID-only tokens) and its recipe knobs."""

from __future__ import annotations

import numpy as np
import pytest

from recsieve.errors import InvalidInputError
from recsieve.evaluation.sasrec import SASRec
from recsieve.training.context_model import TrainConfig


def _cycles(n_users=60, n_items=12, length=14):
    return [((s + np.arange(length)) % n_items).astype(np.int64) for s in range(n_users)], n_items


def test_yardstick_is_id_only_and_full_softmax():
    seqs, n = _cycles()
    model = SASRec(hidden=16, max_len=10, epochs=3, batch_size=16, threads=1, bf16=False)
    model.fit(seqs, n)
    m = model._model
    assert m.settings.text_dim == 0 and m.tower.adapter is None  # item-ID tokens only
    assert model.history["sampled_softmax"] is False
    assert model.history["exclude_seen"] is False  # seen items stay in its softmax, as published
    assert model.score([seqs[0][:5]]).shape == (1, n)


def test_budget_alias_and_validation_keeps_the_best_epoch():
    seqs, n = _cycles(n_users=100)
    model = SASRec(hidden=16, max_len=10, epochs=6, batch_size=16, threads=1, bf16=False,
                   valid_users=20, patience=2, lr=3e-3)
    model.fit(seqs, n)
    h = model.history
    assert h["valid_users"] == 20 and len(h["valid_ndcg@10"]) >= 1
    assert h["best_valid_ndcg10"] == max(h["valid_ndcg@10"])
    assert SASRec(budget_s=5.0).time_budget == 5.0
    with pytest.raises(InvalidInputError, match="budget_s"):
        SASRec(budget_s=5.0, time_budget=6.0)


def test_every_user_is_held_out_by_default_up_to_valid_users():
    """By default every user with 3+ items is held out (the reference's protocol; ``valid_users``
    caps the count), so no user's last item is trained on; ``valid_share`` caps their share."""
    seqs, n = _cycles(n_users=40)
    seqs.append(np.array([1, 2], np.int64))  # too short to hold out
    kw = dict(hidden=16, max_len=10, epochs=1, batch_size=16, threads=1, bf16=False, valid_users=1000)
    fifth, every = SASRec(valid_share=0.2, **kw), SASRec(**kw)
    fifth.fit(seqs, n)
    every.fit(seqs, n)
    assert fifth.history["valid_users"] == 8 and every.history["valid_users"] == 40
    assert every.history["train_users"] == 41  # every user still trains on the items before
    capped = SASRec(**{**kw, "valid_users": 25})
    capped.fit(seqs, n)
    assert capped.history["valid_users"] == 25
    assert fifth.cache_settings()["valid_share"] == 0.2 and every.cache_settings()["valid_share"] == 1.0
    for bad in (0.0, 1.5, "all", True):
        with pytest.raises(InvalidInputError, match="valid_share"):
            SASRec(valid_share=bad)
    with pytest.raises(InvalidInputError, match="valid_share"):
        TrainConfig(valid_share=0.0)


def test_batching_reaches_training_and_the_cache_key():
    """The reference's random batches by default; ``bucket`` trains on other batches (different
    weights from the same seed) and is part of the cache key; an unknown mode is refused."""
    rng = np.random.default_rng(0)
    seqs = [((s + np.arange(rng.integers(3, 14))) % 12).astype(np.int64) for s in range(60)]
    kw = dict(hidden=16, max_len=10, epochs=2, batch_size=8, threads=1, bf16=False)
    plain, bucket = SASRec(**kw), SASRec(batching="bucket", **kw)
    assert plain.batching == "random"
    assert plain.cache_settings()["batching"] == "random" and bucket.cache_settings()["batching"] == "bucket"
    plain.fit(seqs, 12)
    bucket.fit(seqs, 12)
    assert not np.allclose(plain.score(seqs[:3]), bucket.score(seqs[:3]))
    with pytest.raises(InvalidInputError, match="batching"):
        SASRec(batching="sorted")
