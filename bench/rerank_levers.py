"""Each cross-encoder speed lever on its own: speed, agreement with the full model, NDCG@10.

The quality guard of the re-ranker's levers (see ``recsieve.rerankers.levers``), on a real
dataset under the evaluation protocol (leave-one-out by time, full ranking, history
excluded, ties counted at their expected rank):

1. A real engine records every user's training part; a ranking head and a cross-encoder are
   trained on it exactly as ``recsieve evaluate --systems recsieve --cross-encoder`` does
   (or reused from ``--model``). Rows: the ``full`` tier with its fitted blend weight, and
   the ``fast`` tier (head alone).
2. A 2-layer student is distilled from the cross-encoder on (context, head's top-M
   candidates) of a seeded sample of users' training histories -- never a test target.
3. For every lever the cross-encoder alone orders the head's top M (the head keeps the rest
   below, in its order): that is where a lever can change a ranking, whatever the blend
   weight. Per lever: NDCG@10 and HR@10 of that ordering, the cross-encoder's own time per
   100 pairs on these real contexts and the speed-up over the baseline, and agreement with
   the baseline model on the very same pairs (mean Spearman per user, top-1 agreement).
   "top-10" is the top-M lever: the baseline model reading only the head's top 10.

    python bench/rerank_levers.py --dataset ml-1m --data-dir ../shared/data/ml-1m \\
        --users 300 --json bench/results/levers_ml1m.json --plot bench/results/plots/levers.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.embedding import SentenceTransformerEmbedder
from recsieve.engine.config import EngineConfig
from recsieve.engine.ranker import RankingHead
from recsieve.evaluation.datasets import DATASETS, load_dataset
from recsieve.evaluation.harness import evaluate_split
from recsieve.evaluation.protocol import leave_one_out, training_sequences
from recsieve.evaluation.systems import CE_USERS, CachedEmbedder, EngineSystem
from recsieve.rerankers.base import Reranker
from recsieve.rerankers.distill import distill_reranker, spearman
from recsieve.rerankers.factory import open_cross_encoder
from recsieve.rerankers.levers import lever_rerankers


class Recording(Reranker):
    """Wraps a re-ranker: times its calls and keeps its scores per (context, items)."""

    def __init__(self, inner: Reranker) -> None:
        self.inner, self.name, self.model_id = inner, inner.name, inner.model_id
        self.seconds, self.pairs = 0.0, 0
        self.calls: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def score(self, context: str, items: Sequence[str]) -> np.ndarray:
        t = time.perf_counter()
        scores = self.inner.score(context, items)
        self.seconds += time.perf_counter() - t
        self.pairs += len(items)
        self.calls[(context, tuple(items))] = scores
        return scores


class Fitted:
    """An already fitted system under another name (the harness's ``fit`` becomes a no-op)."""

    def __init__(self, system: EngineSystem, name: str) -> None:
        self.system, self.name = system, name

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        pass

    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        return self.system.score(contexts)

    def candidates(self, contexts: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
        return self.system.candidates(contexts, n)


def agreement(base: Recording, other: Recording) -> dict[str, Any]:
    """Mean Spearman and top-1 agreement with the baseline on the same pairs (a shorter list is
    compared with the baseline's scores of the same leading items)."""
    by_context = {context: (items, scores) for (context, items), scores in base.calls.items()}
    rhos, top1 = [], []
    for (context, items), scores in other.calls.items():
        base_items, base_scores = by_context.get(context, ((), None))
        if base_scores is None or base_items[: len(items)] != items:
            continue
        ref = base_scores[: len(items)]
        rhos.append(spearman(scores, ref))
        top1.append(int(np.argmax(scores) == np.argmax(ref)))
    return {"compared_lists": len(rhos), "spearman_vs_baseline": float(np.mean(rhos)) if rhos else None,
            "top1_agreement": float(np.mean(top1)) if top1 else None}


def ce_order_folder(model: Path, head: RankingHead, top: int, out: Path) -> Path:
    """A copy of the head whose cross-encoder weight dominates: the cross-encoder orders its top ``top``."""
    copy = RankingHead.load(model)
    copy.blend, copy.blend_top = 1e3, top
    copy.cross_encoder = str((model / head.cross_encoder).resolve())
    copy.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m", choices=sorted(DATASETS), help="dataset name (default ml-1m)")
    ap.add_argument("--data-dir", required=True, type=Path, help="folder holding the dataset's files")
    ap.add_argument("--users", type=int, default=300, help="seeded sample of test users (default 300)")
    ap.add_argument("--top", type=int, default=20, help="candidates the cross-encoder reads: the head's top M")
    ap.add_argument("--model", type=Path, help="a trained model folder (head + cross-encoder/) to reuse; it must "
                                               "have been trained on this dataset's training part with this seed")
    ap.add_argument("--ce-users", type=int, default=CE_USERS, help="users whose steps train the cross-encoder")
    ap.add_argument("--keep-model", type=Path, help="copy the trained model folder here (for --model later)")
    ap.add_argument("--distil-users", type=int, default=400, help="users whose contexts train the student")
    ap.add_argument("--student-layers", type=int, default=2, help="transformer layers the student keeps")
    ap.add_argument("--student-length", type=int, default=64, help="token limit the student reads")
    ap.add_argument("--short", type=int, default=64, help="token limit of the shorter-input levers")
    ap.add_argument("--seed", type=int, default=0, help="seed of the user samples and training")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--plot", type=Path, help="write a PNG (speed-up vs NDCG@10 per lever) here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    data = load_dataset(args.dataset, args.data_dir)
    split = leave_one_out(data, users=args.users, seed=args.seed)
    embedder = CachedEmbedder(SentenceTransformerEmbedder())
    config = EngineConfig(index="flat", cache="none", refresh_threads=0)
    if args.model:
        system = EngineSystem(data, name="recsieve (full tier)", embedder=embedder, tier="full",
                              config=config.replace(reranker_model=str(args.model.resolve())))
    else:
        system = EngineSystem(data, name="recsieve (full tier)", config=config, embedder=embedder,
                              train_ranker=True, cross_encoder=True, tier="full", ce_users=args.ce_users)
    rows = [evaluate_split(split, system)]
    engine = system.engine
    model = Path(engine.config.reranker_model)
    model = model if model.is_absolute() else engine.directory / model
    head = engine.ranking_head
    if args.keep_model and not args.model:
        shutil.copytree(model, args.keep_model, dirs_exist_ok=True)
    rows[0]["blend"] = head.blend
    engine.use_model(model, tier="fast")
    rows.append(evaluate_split(split, Fitted(system, "recsieve (fast tier)")))
    teacher = model / head.cross_encoder

    with tempfile.TemporaryDirectory(prefix="recsieve-levers-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(args.seed)
        train = training_sequences(split)
        picks = rng.choice(len(train), size=min(args.distil_users, len(train)), replace=False)
        groups = []
        for u in picks.tolist():
            view = system.view(train[u][:-1])
            ranked, _ = engine.rank(view)
            groups.append((engine.render_context(view, None),
                           [engine.catalog.text(int(r)) for r in ranked[: args.top]]))
        student_report = distill_reranker(teacher, groups, out=work / "student", layers=args.student_layers,
                                          max_length=args.student_length, seed=args.seed)
        print(f"student: held-out Spearman {student_report['valid_spearman_before']:.3f} -> "
              f"{student_report['valid_spearman_after']:.3f} ({student_report['seconds']:.0f}s)")

        levers: dict[str, tuple[Reranker, int]] = {
            name: (rr, args.top) for name, rr in lever_rerankers(teacher, student=work / "student",
                                                                  short=args.short).items()}
        levers["top-10"] = (open_cross_encoder(teacher), 10)
        folders = {m: ce_order_folder(model, head, m, work / f"ce-order-{m}") for m in {m for _, m in levers.values()}}
        recorded: dict[str, Recording] = {}
        for name, (reranker, top) in levers.items():
            rec = recorded[name] = Recording(reranker)
            engine.use_model(folders[top], tier="full", reranker=rec)
            row = evaluate_split(split, Fitted(system, f"cross-encoder orders top {top}: {name}"))
            row.update(lever=name, top=top, pairs=rec.pairs, ce_seconds=rec.seconds,
                       ms_per_100_pairs=rec.seconds / max(rec.pairs, 1) * 1e5)
            row.update(agreement(recorded["baseline"], rec))
            rows.append(row)
            print(f"{name:32s} NDCG@10 {row['ndcg@10']:.4f}  {row['ms_per_100_pairs']:8.1f} ms/100 pairs  "
                  f"Spearman {row['spearman_vs_baseline']:.3f}")
    base = next(r for r in rows if r.get("lever") == "baseline")
    for r in rows:
        if "lever" in r:
            per_list = r["ms_per_100_pairs"] * r["top"] / 100
            r["speedup_vs_baseline"] = base["ms_per_100_pairs"] * base["top"] / 100 / per_list
            r["ndcg@10_change_vs_baseline"] = r["ndcg@10"] / base["ndcg@10"] - 1 if base["ndcg@10"] else None
    report = {
        "dataset": data.name, "users": split.n_users, "items": data.n_items, "seed": args.seed,
        "protocol": "leave-one-out, full ranking, history excluded; levers: the cross-encoder orders the "
                    "ranking head's top M",
        "student": {k: v for k, v in student_report.items() if k != "teacher"},
        "results": rows, "wall_seconds": round(time.perf_counter() - t0, 1),
        "command": "python bench/rerank_levers.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    system.close()
    for r in rows:
        extra = (f"  x{r['speedup_vs_baseline']:.2f}  {r['ndcg@10_change_vs_baseline']:+.1%}"
                 if "lever" in r else "")
        print(f"{r['system']:60s} NDCG@10 {r['ndcg@10']:.4f} HR@10 {r['hr@10']:.4f}{extra}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(rows, args.plot)
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Speed-up over the baseline cross-encoder against NDCG@10, one point per lever."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in rows if "lever" in r):
        ax.scatter(r["speedup_vs_baseline"], r["ndcg@10"])
        ax.annotate(r["lever"], (r["speedup_vs_baseline"], r["ndcg@10"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    for r in (r for r in rows if "lever" not in r):
        ax.axhline(r["ndcg@10"], linestyle=":", linewidth=1, color="grey")
        ax.annotate(r["system"], (1, r["ndcg@10"]), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of the cross-encoder over its fp32 baseline (log)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Cross-encoder levers: speed vs quality")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
