"""Test NDCG@10 of saved context models alone and of the sum of their scores (a two-model
ensemble), all users of a dataset (leave-one-out, full ranking, history excluded).

python bench/ensemble_experiment.py --dataset ml-1m --data ../shared/data/ml-1m MODEL_DIR MODEL_DIR [...]
Models come from ``bench/context_experiment.py --save DIR``. Prints each model's NDCG@10 / HR@10 /
recall@200, the ensemble's, and the ensemble's paired gain over each model (95% bootstrap).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from recsieve.context.model import ContextModel
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.harness import PER_USER, evaluate_split
from recsieve.evaluation.protocol import leave_one_out
from recsieve.intervals import paired_gain


class ScoreSum:
    """An evaluation-harness scorer: the sum of some trained models' scores (``fit`` does nothing)."""

    def __init__(self, models: Sequence[ContextModel], name: str) -> None:
        self.models, self.name = list(models), name

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        pass

    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        return sum(m.score_items(contexts) for m in self.models)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders saved by bench/context_experiment.py --save")
    ap.add_argument("--dataset", default="ml-1m", help="dataset name as recsieve evaluate takes it")
    ap.add_argument("--data", default="../shared/data/ml-1m", help="its folder")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for scoring")
    a = ap.parse_args()
    split = leave_one_out(load_dataset(a.dataset, a.data))
    models = [ContextModel.load(f, threads=a.threads) for f in a.models]
    per_user, rows = {}, {}
    for name, ms in [*((f, [m]) for f, m in zip(a.models, models)), ("sum", models)]:
        row = evaluate_split(split, ScoreSum(ms, name), stage="test", progress=False, per_user=True)
        per_user[name] = list(row.pop(PER_USER)["ndcg@10"])
        rows[name] = {k: round(row[k], 4) for k in ("ndcg@10", "hr@10", "recall@200") if k in row}
    gains = {f"sum - {f}": paired_gain(per_user["sum"], per_user[f]) for f in a.models}
    print(json.dumps({"rows": rows, "paired_ndcg10": gains}))


if __name__ == "__main__":
    main()
