"""What exploration slots for new items (``EngineConfig.new_item_slots`` / ``new_item_position``)
buy on cold-target users and cost on warm-target users, for one trained recsieve.

python bench/new_item_slots.py [--data ../shared/data/ml-1m] [--cold-items 0.1] [--budget-s 600]
  [--ranker-users 2000] [--warm-users 1000] [--settings 0@0,1@9,1@5,1@0,2@8,3@7] [--id-dropout F]
  [--cold-share F] [--json FILE] [--per-user FILE.npz]

The cold-item protocol of ``recsieve evaluate --cold-items`` (``cold_item_split``: a seeded share of
the items never reaches training or a context): recsieve (context model, candidate scorer, head;
``recsieve train``'s defaults but the encoder's ``--budget-s``) is trained once on its training
part, then served under each ``SLOTS@POSITION`` setting and evaluated on every user whose test
target is cold and on a seeded sample of ``--warm-users`` users whose test target is warm
(leave-one-out, full ranking, history excluded), beside zero-shot text recall (MiniLM, the
baseline to beat on cold targets). Each setting's row pairs its per-user NDCG@10 with the
setting without slots (mean difference and its normal-approximation 95% half-width).
``--id-dropout`` / ``--cold-share`` train with ID dropout in the context encoder
(``TrainConfig.id_dropout``) and pseudo-cold head examples (``train_engine(cold_share=...)``),
the cold-item training (default 0 and 0, the library's defaults: without it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from recsieve import Engine
from recsieve.embedding import SentenceTransformerEmbedder
from recsieve.engine.config import EngineConfig
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.metrics import history_mask, rank_metrics
from recsieve.evaluation.protocol import Split, cold_item_split, training_sequences
from recsieve.evaluation.systems import CachedEmbedder, EngineSystem, TextZeroShot


def per_user(system, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@10 and HR@10 of ``system`` on ``split``'s test targets, history excluded
    (the harness's metrics: :func:`~recsieve.evaluation.metrics.rank_metrics`, ties by expected rank)."""
    contexts, targets = split.contexts("test"), split.targets("test")
    parts = [rank_metrics(system.score(contexts[lo:lo + 128]), targets[lo:lo + 128],
                          history_mask(contexts[lo:lo + 128], split.n_items), ks=(10,))
             for lo in range(0, len(targets), 128)]
    return np.concatenate([p["ndcg@10"] for p in parts]), np.concatenate([p["hr@10"] for p in parts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/ml-1m", help="ML-1M folder")
    ap.add_argument("--cold-items", type=float, default=0.1, help="share of the items declared cold")
    ap.add_argument("--budget-s", type=float, default=600, help="context encoder's training budget")
    ap.add_argument("--ranker-users", type=int, default=2000, help="users of the head's examples")
    ap.add_argument("--warm-users", type=int, default=1000, help="warm-target users evaluated")
    ap.add_argument("--settings", default="0@0,1@9,1@5,1@0,2@8,3@7", help="SLOTS@POSITION, comma-separated")
    ap.add_argument("--id-dropout", type=float, default=0.0, help="context encoder's ID dropout (TrainConfig)")
    ap.add_argument("--cold-share", type=float, default=0.0, help="share of items made pseudo-cold for the head")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--per-user", help="save every setting's per-user NDCG@10 here (.npz; keys SPLIT_SLOTS@POSITION), "
                    "to pair two trainings on the same users")
    a = ap.parse_args()
    settings = [tuple(int(x) for x in s.split("@")) for s in a.settings.split(",")]
    if (0, 0) not in settings:
        settings.insert(0, (0, 0))

    data = load_dataset("ml-1m", a.data)
    cold = cold_item_split(data, a.cold_items, stage="test", seed=a.seed)
    last = np.array([s[-1] for s in cold.sequences])
    warm_pool = np.flatnonzero(~np.isin(last, cold.cold) & np.array([len(s) > 1 for s in cold.sequences]))
    pick = np.random.default_rng(a.seed).choice(warm_pool, min(a.warm_users, warm_pool.size), replace=False)
    warm = dataclasses.replace(cold, evaluated=np.sort(pick).astype(np.int64))
    splits = {"cold": cold, "warm": warm}

    embedder = CachedEmbedder(SentenceTransformerEmbedder())
    config = EngineConfig(index="flat", cache="none", refresh_threads=0)
    system = EngineSystem(data, name="recsieve", config=config, embedder=embedder, context=True,
                          context_budget_s=a.budget_s, ranker_users=a.ranker_users, progress=False)
    if a.id_dropout or a.cold_share:
        import recsieve.training as training
        from recsieve.training.context_model import TrainConfig

        train_engine = training.train_engine

        def cold_training(*args, **kwargs):
            kwargs["encoder"] = TrainConfig(budget_s=kwargs.pop("budget_s"), seed=a.seed, id_dropout=a.id_dropout)
            return train_engine(*args, cold_share=a.cold_share, **kwargs)

        training.train_engine = cold_training  # EngineSystem imports it when it trains
    t0 = time.perf_counter()
    system.fit(training_sequences(cold, "test"), cold.n_items)
    report = {"command": "python bench/new_item_slots.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v not in (None, False, 0.0) and k not in ("data", "json", "per_user")
    ).replace(" True", ""), "fit_seconds": round(time.perf_counter() - t0, 1),
        "cold_items": int(cold.cold.size), "users": {k: int(s.n_users) for k, s in splits.items()},
        "pseudo_cold": system.train_report.get("pseudo_cold"), "rows": []}
    zero_shot = TextZeroShot(data, embedder)
    zero_shot.fit(training_sequences(cold, "test"), cold.n_items)
    report["text-zero-shot"] = {k: dict(zip(("ndcg@10", "hr@10"), (float(m.mean()) for m in per_user(zero_shot, s))))
                                for k, s in splits.items()}
    print("text-zero-shot", report["text-zero-shot"], flush=True)

    directory, model = system.engine.directory, system.model
    system.engine.save()
    system.engine.close()
    base: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for slots, position in settings:
        system.engine = Engine.open(directory, embedder=embedder,
                                    config=config.replace(new_item_slots=slots, new_item_position=position))
        system.engine.use_model(model)
        row = {"new_item_slots": slots, "new_item_position": position}
        for name, split in splits.items():
            ndcg, hit = per_user(system, split)
            base.setdefault(name, ndcg)
            kept[f"{name}_{slots}@{position}"] = ndcg
            d = ndcg - base[name]
            row[name] = {"ndcg@10": float(ndcg.mean()), "hr@10": float(hit.mean()),
                         "ndcg@10_vs_no_slots": float(d.mean()),
                         "ndcg@10_vs_no_slots_95": float(1.96 * d.std(ddof=1) / np.sqrt(len(d)))}
        system.engine.close()
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    system.engine = None
    system.close()
    if a.per_user:
        np.savez(a.per_user, **kept)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
