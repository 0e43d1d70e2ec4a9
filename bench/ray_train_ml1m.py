"""The context encoder trained in one process and data-parallel on Ray Train, on the same ML-1M users.

python bench/ray_train_ml1m.py [--data ../shared/data/ml-1m] [--users 1000] [--epochs 10] [--workers 2]
  [--text-cache bench/.cache/ml1m_text.npy] [--ray-first] [--single-threads N] [--json FILE]

A seeded subset of ``--users`` users is the whole dataset (training and evaluation); leave-one-out,
full ranking, history excluded, test stage. Both systems train the encoder as ``recsieve train``
does (``ContextSettings`` / ``TrainConfig`` defaults: dim 64, 200 events, full softmax, AdamW,
batch 128, cosine schedule, 512 validation users choosing the best epoch) for a fixed
``--epochs`` (no time budget, no early stop): one process on all the machine's torch threads, and
``--workers`` Ray Train workers of one CPU each on a local Ray with that many CPUs (started before
either trains, so its idle processes share the machine with both). The report is
the harness's (``recsieve.evaluation.harness.evaluate``): NDCG@10 / HR@10 per system, fit seconds,
and the Ray row's paired difference from the single process with its 95% bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
from context_experiment import text_vectors  # this folder's module

from recsieve.context import ContextSettings
from recsieve.distributed import ray_session
from recsieve.evaluation.datasets import Dataset, load_dataset
from recsieve.evaluation.harness import evaluate, format_table
from recsieve.training.context_model import ContextScorer, TrainConfig
from recsieve.training.ray_train import fit_context_model_on_ray


class Loaded(ContextScorer):
    """:class:`ContextScorer` noting the machine's load average before and after its ``fit``."""

    def fit(self, train_sequences, n_items: int) -> None:
        before = os.getloadavg()[0]
        self._fit(train_sequences, n_items)
        self.history["load_average_1min"] = [round(before, 2), round(os.getloadavg()[0], 2)]

    def _fit(self, train_sequences, n_items: int) -> None:
        super().fit(train_sequences, n_items)


class RayContextScorer(Loaded):
    """:class:`ContextScorer` whose ``fit`` trains the encoder on Ray Train workers."""

    def __init__(self, *args, workers: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.workers = workers

    def _fit(self, train_sequences, n_items: int) -> None:
        self.model, self.history = fit_context_model_on_ray(
            train_sequences, n_items, self.text_vectors, settings=self.settings, config=self.config,
            workers=self.workers)


def subset(data: Dataset, users: int, seed: int) -> Dataset:
    """A seeded subset of the users, in their original order (all items kept)."""
    keep = np.sort(np.random.default_rng(seed).choice(data.n_users, size=min(users, data.n_users), replace=False))
    pick = lambda xs: None if xs is None else tuple(xs[u] for u in keep)  # noqa: E731
    return Dataset(data.name, data.items, data.item_texts, pick(data.user_ids), pick(data.sequences),
                   pick(data.timestamps), pick(data.kinds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/ml-1m")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-cache", default="bench/.cache/ml1m_text.npy")
    ap.add_argument("--ray-first", action="store_true", help="train on Ray first, then in one process")
    ap.add_argument("--single-threads", type=int, help="torch threads of the single process (default: torch's)")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args()
    full = load_dataset("ml-1m", a.data)
    data = subset(full, a.users, a.seed)
    vectors = text_vectors(full, a.text_cache)
    settings = ContextSettings(n_warm=data.n_items, text_dim=vectors.shape[1])
    config = TrainConfig(epochs=a.epochs, budget_s=None, patience=None, seed=a.seed)
    single = config if a.single_threads is None else replace(config, threads=a.single_threads)
    systems = [Loaded(vectors, settings=settings, config=single, name="single-process"),
               RayContextScorer(vectors, settings=settings, config=config, name=f"ray-{a.workers}-workers",
                                workers=a.workers)]
    if a.ray_first:
        systems.reverse()
    t0 = time.perf_counter()
    with ray_session(None, num_cpus=a.workers):  # started first: a Ray that cannot start fails before any training
        report = evaluate(data, systems, seed=a.seed, progress=False, reference="single-process")
    report["command"] = "python bench/ray_train_ml1m.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v not in (None, False) and k not in ("data", "json")
    ).replace(" True", "")
    report["train_users"] = data.n_users
    report["encoder"] = {s.name: {k: v for k, v in s.history.items() if k in (
        "epochs", "seconds", "best_epoch", "best_valid_ndcg10", "train_users", "valid_users", "bf16", "workers",
        "load_average_1min")}
        for s in systems}
    report["encoder_losses"] = {s.name: [round(x, 4) for x in s.history["losses"]] for s in systems}
    report["cpu_count"] = os.cpu_count()
    report["load_average_after"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(format_table(report))
    print(json.dumps({k: report[k] for k in ("encoder", "encoder_losses", "wall_s", "load_average_after")}))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
