"""The context encoder trained data-parallel: two gloo workers take the single process's steps
(no Ray: ``torch.multiprocessing``), and ``recsieve train --ray --workers 2`` on a local Ray
instance (``slow``: Ray takes seconds to start) writes the same model folder, learns what the
single process learns, and refuses bad options with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsieve.context import ContextSettings
from recsieve.errors import InvalidInputError
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.data_parallel import DataParallel


def planted(users: int, n_items: int = 20, seed: int = 0) -> list[np.ndarray]:
    """A->B->C and D->B->E behind random fillers: after B, only the item before B tells C from E."""
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(users):
        fill = rng.integers(5, n_items, size=rng.integers(1, 4))
        pat = [0, 1, 2] if u % 2 == 0 else [3, 1, 4]
        seqs.append(np.array([*fill, *pat], np.int64))
    return seqs


# 201 users, batches of 20: the last batch has one row, so one of two workers gets none
SEQS = planted(201)
TEXT = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
SETTINGS = ContextSettings(n_warm=20, text_dim=8, dim=16, max_len=8, dropout=0.0, adapter_hidden=16)
CONFIG = TrainConfig(epochs=3, lr=5e-3, batch_size=20, bf16=False, valid_users=40, patience=None, threads=1)


def _state(model) -> dict[str, np.ndarray]:
    return {f"{part}.{k}": v.detach().numpy().copy()
            for part in ("tower", "encoder") for k, v in getattr(model, part).state_dict().items()}


def _gloo_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, history = fit_context_model(SEQS, 20, TEXT, settings=SETTINGS, config=CONFIG,
                                           parallel=DataParallel.current())
        torch.save({"state": _state(model), "history": history}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_train_the_single_process_model(tmp_path):
    """Dropout 0, full softmax, fp32: each step of the group is the single process's step over
    the same rows, so after 3 epochs (a worker with an empty share of a batch among them) the
    weights, losses and validation metrics are the single process's, to float rounding."""
    alone, hist = fit_context_model(SEQS, 20, TEXT, settings=SETTINGS, config=CONFIG)
    mp.spawn(_gloo_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    expected = _state(alone)
    for got in ranks:
        assert got["state"].keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(got["state"][name], value, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["history"]["losses"], hist["losses"], rtol=1e-5)
        np.testing.assert_allclose(got["history"]["valid_ndcg@10"], hist["valid_ndcg@10"], atol=2e-5)
        assert got["history"]["train_users"] == hist["train_users"] and got["history"]["valid_users"] == 40
    for name in expected:  # the two workers hold one model
        np.testing.assert_array_equal(ranks[0]["state"][name], ranks[1]["state"][name])
    assert hist["losses"][-1] < hist["losses"][0]  # it trained: the comparison is not of two idle models


def _averaging_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        w, unused = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.zeros(2))
        x, y = torch.randn(7, 3), torch.randn(7, 5)  # the same batch in every worker
        mine = x[DataParallel(rank, world).shard(np.arange(7))]
        mine_y = y[DataParallel(rank, world).shard(np.arange(7))]
        ((mine @ w.T - mine_y) ** 2).sum(1).mean().backward()
        n, extra = DataParallel.current().average_gradients([w, unused], len(mine), (float(rank), 1.0))
        torch.save({"grad": w.grad.clone(), "unused": unused.grad, "n": n, "extra": extra}, f"{out}/g{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_averaged_gradient_is_the_whole_batch_gradient(tmp_path):
    """Uneven shares (4 and 3 rows): the count-weighted mean of the workers' gradients is the
    gradient of the mean loss over all 7 rows; a parameter no worker used keeps no gradient."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as each worker draws them
        w = torch.nn.Parameter(torch.randn(5, 3))
        x, y = torch.randn(7, 3), torch.randn(7, 5)
    ((x @ w.T - y) ** 2).sum(1).mean().backward()
    mp.spawn(_averaging_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    for r in range(2):
        got = torch.load(tmp_path / f"g{r}.pt", weights_only=False)
        torch.testing.assert_close(got["grad"], w.grad, rtol=1e-5, atol=1e-6)
        assert got["unused"] is None and got["n"] == 7 and got["extra"] == [1.0, 2.0]


def test_a_bad_rank_or_world_size_is_refused():
    with pytest.raises(InvalidInputError, match="^world_size=0"):
        DataParallel(0, 0)
    with pytest.raises(InvalidInputError, match="^rank=2"):
        DataParallel(2, 2)
    with pytest.raises(InvalidInputError, match="^parallel="):
        DataParallel.current()  # no process group in this process
