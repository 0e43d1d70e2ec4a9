"""How many users early stopping holds out: a fifth of them (the old rule) against every user
(``TrainConfig.valid_share`` 0.2 against 1.0; ``valid_users`` caps both at 2,048).

Trains two copies of one system in one ``evaluate`` run, on the same split and users, and pairs
their test NDCG@10 / HR@10 per user: ``--system sasrec`` the SASRec yardstick (1,800 s budget,
patience 10, as ``recsieve evaluate`` trains it), ``--system recsieve`` the whole engine (context
encoder 1,200 s, head on 2,000 users, as ``recsieve evaluate`` trains it; the encoder's share is
set by patching the ``TrainConfig`` that training builds).

    python bench/valid_share_experiment.py --system sasrec --dataset ml-100k --data-dir ../shared/data/ml-100k --json OUT
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import recsieve.training.model as training_model
from recsieve.embedding import SentenceTransformerEmbedder
from recsieve.engine.config import EngineConfig
from recsieve.evaluation.cli import SASREC_PATIENCE
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.harness import evaluate
from recsieve.evaluation.sasrec import SASRec
from recsieve.evaluation.systems import CachedEmbedder, EngineSystem
from recsieve.training.context_model import TrainConfig

SHARES = (0.2, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=("sasrec", "recsieve"), required=True, help="which system to train twice")
    parser.add_argument("--dataset", required=True, help="a recsieve evaluate dataset name (ml-100k, ml-1m, ...)")
    parser.add_argument("--data-dir", required=True, help="the dataset's folder")
    parser.add_argument("--json", required=True, help="write the evaluation report here")
    args = parser.parse_args()
    data = load_dataset(args.dataset, args.data_dir)
    if args.system == "sasrec":
        systems = [SASRec(seed=0, budget_s=1800.0, valid_users=TrainConfig.valid_users, valid_share=share,
                          patience=SASREC_PATIENCE, name=f"sasrec-share{share}", threads=2) for share in SHARES]
    else:
        config = EngineConfig(index="flat", cache="none", refresh_threads=0)
        embedder = CachedEmbedder(SentenceTransformerEmbedder())

        class Variant(EngineSystem):
            def __init__(self, share: float) -> None:
                super().__init__(data, name=f"recsieve-share{share}", config=config, embedder=embedder, context=True,
                                 context_budget_s=1200.0, ranker_users=2000, progress=False)
                self.share = share

            def fit(self, seqs, n):  # type: ignore[no-untyped-def]
                original = training_model.TrainConfig
                training_model.TrainConfig = partial(TrainConfig, valid_share=self.share)
                try:
                    super().fit(seqs, n)
                finally:
                    training_model.TrainConfig = original

        systems = [Variant(share) for share in SHARES]
    reference = systems[0].name
    report = evaluate(data, systems, reference=reference, progress=False)
    for system, row in zip(systems, report["results"]):
        history = getattr(system, "history", None) or (system.train_report or {}).get("encoder")
        row["training"] = history
        print(row["system"], round(row["ndcg@10"], 4), round(row["hr@10"], 4), row.get(f"vs_{reference}"))
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
