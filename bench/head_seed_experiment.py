"""Is a feature's measured weight the head's training noise? Re-fit the ranking head with and
without one feature (default: the candidate scorer's) under several seeds, on one cached
evaluation model.

    python bench/head_seed_experiment.py --data-dir ../shared/data/ml-1m --entry DIR/ml-1m-recsieve-KEY \\
        [--seeds 0,1,2] [--split-seed S] [--average] [--select ndcg|loss] [--cv-folds K] [--users N]
        [--feature NAME] [--fit-cooccurrence] [--json FILE]

``--entry``: a ``recsieve evaluate --cache-dir DIR`` entry of the ``recsieve`` system (trained with
its ablation). The engine is rebuilt as ``recsieve evaluate`` builds it and serves the entry's
context model (encoder and candidate scorer unchanged); the head's examples are rebuilt as
``train_engine`` builds them (the same 2,000 seeded example users, their last 3 steps). For each
seed, the head and its ablation (``--feature`` held at 0) are fitted as ``train_engine``
fits them -- the seed draws the validation users (early stopping) and the initial weights -- and
each serves the test users; the report pairs them per seed. Seed 0 is the entry's own draw.
``--fit-cooccurrence``: an entry trained before the co-occurrence feature gets its counts as
``train_engine`` fits them (on the encoder's sequences: the example users' held-out steps left
out); the entry itself is not changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from recsieve.context.cooccurrence import CoOccurrence
from recsieve.context.model import ContextModel
from recsieve.engine.config import EngineConfig
from recsieve.engine.context import CONTEXT_DIR
from recsieve.engine.ranker import RankingHead
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.metrics import history_mask, rank_metrics
from recsieve.evaluation.protocol import leave_one_out, training_sequences
from recsieve.evaluation.systems import CachedEmbedder, EngineSystem
from recsieve.intervals import paired_gain
from recsieve.training.examples import (
    engine_sequences,
    last_positives,
    ranking_groups,
    sample_users,
)
from recsieve.training.head import head_fitter, split_users, without_feature
from recsieve.training.model import SCORER_STEPS, encoder_sequences


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="ML-1M folder (ratings.dat, movies.dat)")
    ap.add_argument("--dataset", default="ml-1m", help="dataset name as recsieve evaluate takes it")
    ap.add_argument("--entry", required=True, help="a recsieve evaluate cache entry folder of the recsieve system")
    ap.add_argument("--seeds", default="0,1,2", help="head seeds, comma-separated (0: the entry's own)")
    ap.add_argument("--users", type=int, default=None, help="evaluate a seeded subset of test users (default all)")
    ap.add_argument("--example-users", type=int, default=2000, help="the entry's example users (evaluate's default)")
    ap.add_argument("--steps", type=int, default=3, help="the head's steps per user (evaluate's default)")
    ap.add_argument("--split-seed", type=int, default=None,
                    help="draw the validation users with this seed for every head (default: each head's seed)")
    ap.add_argument("--average", action="store_true",
                    help="also serve one head averaging the seeds' heads (and one averaging their ablations)")
    ap.add_argument("--select", default="ndcg", choices=("ndcg", "loss"),
                    help="keep the epoch with the best validation NDCG@10 or the lowest validation loss "
                         "(fit_head's select; default ndcg, as the entry was trained)")
    ap.add_argument("--cv-folds", type=int, default=0,
                    help="choose the heads' epoch count by K-fold cross-validation over the training users "
                         "(fit_head_cv, as train_engine_ranker's cv_folds); 0 (default): early stopping on the "
                         "validation users, as the entry was trained")
    ap.add_argument("--feature", default="context.context_cross",
                    help="the feature each ablation head is fitted without (default: the candidate scorer's)")
    ap.add_argument("--fit-cooccurrence", action="store_true",
                    help="give the entry's context model co-occurrence counts fitted as train_engine fits them")
    ap.add_argument("--json", default=None, help="write the report here")
    a = ap.parse_args()
    from recsieve.embedding import SentenceTransformerEmbedder

    t0 = time.perf_counter()
    data = load_dataset(a.dataset, a.data_dir)
    split = leave_one_out(data, users=a.users, seed=0)
    state = Path(a.entry) / "state"
    work = Path(tempfile.mkdtemp(prefix="head-seeds-"))
    system = EngineSystem(data, config=EngineConfig(index="flat", cache="none", refresh_threads=0),
                          embedder=CachedEmbedder(SentenceTransformerEmbedder()), context=True, ablation=True)
    system.load_fitted(state, training_sequences(split, "test"), data.n_items)
    engine, base = system.engine, system.model
    sequences = engine_sequences(engine)
    among = set(sample_users([u for u, s in sequences.items() if last_positives(s, a.steps)], a.example_users, 0))
    folder = Path(shutil.copytree(base, work / "model"))  # the entry's context model, once; each head replaces its head
    if a.fit_cooccurrence:
        context = ContextModel.load(folder / CONTEXT_DIR)
        context.cooccurrence = CoOccurrence.fit(encoder_sequences(sequences, a.steps + SCORER_STEPS, among),
                                                engine.catalog.num_rows)
        context.save(folder / CONTEXT_DIR)
    model = engine.load_model(folder)
    groups, _ = ranking_groups(engine, sequences, users=a.example_users, steps_per_user=a.steps, seed=0,
                               among=among, model=model, progress=True)
    names = engine.feature_names(context=True)
    col = list(names).index(a.feature)
    contexts, targets = split.contexts("test"), split.targets("test")
    mask = history_mask(contexts, data.n_items)
    report: dict = {"dataset": a.dataset, "entry": Path(a.entry).name, "test_users": len(targets),
                    "split_seed": a.split_seed, "select": a.select, "cv_folds": a.cv_folds, "feature": a.feature,
                    "fit_cooccurrence": a.fit_cooccurrence, "examples": len(groups), "seeds": []}
    system.model = folder

    def test_ndcg(head) -> np.ndarray:
        head.save(folder)
        engine.use_model(folder)
        return rank_metrics(system.score(contexts), targets, mask, ks=(10,))["ndcg@10"]

    heads = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        train, valid = split_users(groups, 0.1, seed if a.split_seed is None else a.split_seed)
        fit = head_fitter(train, valid, names, cv_folds=a.cv_folds, seed=seed, select=a.select)  # as training fits
        full = fit([g.features for g in train], [g.features for g in valid])
        ablated = fit(without_feature(train, col), without_feature(valid, col))
        nf, na = test_ndcg(full), test_ndcg(ablated)
        row = {"seed": seed, "ndcg@10": float(nf.mean()), "ndcg@10_without_feature": float(na.mean()),
               "without_minus_with": paired_gain(na.tolist(), nf.tolist()),
               "best_epochs": [full.report.get("best_epoch"), ablated.report.get("best_epoch")]}
        report["seeds"].append(row)
        print(json.dumps(row), flush=True)
        heads.append((full, ablated))
    if a.average and len(heads) > 1:  # one head averaging every seed's (RankingHead.average), and its ablation
        nf = test_ndcg(RankingHead.average([f for f, _ in heads]))
        na = test_ndcg(RankingHead.average([b for _, b in heads]))
        report["average"] = {"seeds": a.seeds, "ndcg@10": float(nf.mean()), "ndcg@10_without_feature": float(na.mean()),
                             "without_minus_with": paired_gain(na.tolist(), nf.tolist())}
        print(json.dumps(report["average"]), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    system.close()
    shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
