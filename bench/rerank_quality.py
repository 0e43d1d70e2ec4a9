"""Does the trained re-ranker beat recall-only ordering? (the re-ranking figure in the README)

Leave-one-out by time on a real dataset: every user's last item is the test target, the one
before is the validation target. The engine records every user's training part (history +
validation item) as events; ``train-reranker`` trains on those events (each user's last event,
the validation item, is its validation target, so the split is by time) and the trained model
re-ranks the engine's recall for a seeded subset of test users. Both orderings rank the same
candidates; items outside them score -inf (ties, counted honestly).

    python bench/rerank_quality.py --dataset ml-1m --data-dir ../shared/data/ml-1m \\
        --train-users 400 --eval-users 200 --json bench/out/rerank_ml1m.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from recsieve.embedding import SentenceTransformerEmbedder
from recsieve.engine.config import EngineConfig
from recsieve.engine.train import train_engine_reranker
from recsieve.evaluation.datasets import DATASETS, load_dataset
from recsieve.evaluation.harness import evaluate_split, format_table
from recsieve.evaluation.protocol import leave_one_out
from recsieve.evaluation.systems import CachedEmbedder, EngineSystem
from recsieve.rerankers.cross_encoder import CrossEncoderReranker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--train-users", type=int, default=400, help="users sampled for re-ranker training")
    ap.add_argument("--steps-per-user", type=int, default=2)
    ap.add_argument("--n-hard", type=int, default=4, help="hard negatives (from recall) per example")
    ap.add_argument("--n-random", type=int, default=1, help="random negatives per example")
    ap.add_argument("--eval-users", type=int, default=200, help="seeded subset of test users")
    ap.add_argument("--rerank-n", type=int, default=50, help="candidates the re-ranker reads")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-5, help="learning rate of the fine-tuning")
    ap.add_argument("--channel-weights", default="1.0,1.0,0.3", help="recall fusion weights (vector,transitions,popularity)")
    ap.add_argument("--loss", choices=("bce", "listwise"), default="bce")
    ap.add_argument("--model", type=Path, help="reuse a trained model instead of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    data = load_dataset(args.dataset, args.data_dir)
    split = leave_one_out(data, users=args.eval_users, seed=args.seed)
    embedder = CachedEmbedder(SentenceTransformerEmbedder())
    config = EngineConfig(index="flat", cache="none", refresh_threads=0, rerank_n=args.rerank_n,
                          channel_weights=tuple(float(w) for w in args.channel_weights.split(",")))
    recall_only = EngineSystem(data, name="recsieve-recall", config=config, embedder=embedder, rerank=False)
    row_recall = evaluate_split(split, recall_only)  # fits: builds the engine from training events
    train_info = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "reranker"
            t = time.perf_counter()
            report = train_engine_reranker(recall_only.engine, model, users=args.train_users,
                                           steps_per_user=args.steps_per_user, n_hard=args.n_hard,
                                           n_random=args.n_random, epochs=args.epochs, lr=args.lr,
                                           max_length=args.max_length, loss=args.loss, seed=args.seed)
            train_info = dict(report.to_dict(), out="(temporary folder)", wall_seconds=time.perf_counter() - t)
            print(f"trained: validation NDCG@10 {report.valid_before['ndcg@10']:.4f} -> "
                  f"{report.valid_after['ndcg@10']:.4f} ({report.train_examples} examples, {report.seconds:.0f}s)")
        full = EngineSystem(data, name="recsieve", config=config, embedder=embedder,
                            reranker=CrossEncoderReranker(str(model), max_length=args.max_length))
        row_full = evaluate_split(split, full)
        full.close()
    recall_only.close()
    out = {
        "dataset": data.name,
        "users": split.n_users,
        "items": data.n_items,
        "protocol": "leave-one-out, full ranking, history excluded (re-ranker on the top rerank_n of recall)",
        "seed": args.seed,
        "rerank_n": args.rerank_n,
        "train": train_info,
        "results": [row_recall, row_full],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    print(format_table(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
