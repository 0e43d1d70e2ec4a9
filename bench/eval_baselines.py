"""Baselines under the leave-one-out, full-ranking protocol; writes a JSON report.

Example (the figures in the evaluation report)::

    python bench/eval_baselines.py --dataset ml-1m --data-dir ../shared/data/ml-1m \\
        --sasrec-epochs 200 --sasrec-budget 600 --json out/ml1m.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from recsieve.evaluation.baselines import ItemKNN, Popularity, Transitions
from recsieve.evaluation.datasets import DATASETS, load_dataset
from recsieve.evaluation.harness import evaluate, format_table
from recsieve.evaluation.sasrec import SASRec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--users", type=int, default=None, help="seeded subset of evaluated users")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", choices=("valid", "test"), default="test")
    ap.add_argument("--systems", default="popularity,item-knn,transitions,sasrec")
    ap.add_argument("--sasrec-epochs", type=int, default=200)
    ap.add_argument("--sasrec-budget", type=float, default=600.0, help="SASRec training seconds")
    ap.add_argument("--sasrec-batch", type=int, default=128)
    ap.add_argument("--sasrec-lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    factories = {
        "popularity": Popularity,
        "item-knn": ItemKNN,
        "transitions": Transitions,
        "sasrec": lambda: SASRec(
            epochs=args.sasrec_epochs,
            time_budget=args.sasrec_budget,
            threads=args.threads,
            batch_size=args.sasrec_batch,
            lr=args.sasrec_lr,
            seed=args.seed,
            progress=True,
        ),
    }
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(factories))
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {sorted(factories)}")
    systems = [factories[s]() for s in wanted]
    data = load_dataset(args.dataset, args.data_dir)
    start = time.perf_counter()
    report = evaluate(data, systems, users=args.users, seed=args.seed, stage=args.stage)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    report["command"] = " ".join(["python", *sys.argv])
    report["machine"] = (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, torch threads {args.threads}"
    )
    for system in systems:
        if isinstance(system, SASRec):
            row = next(r for r in report["results"] if r["system"] == system.name)
            row["train_epochs"] = system.history["epochs"]
            row["final_loss"] = round(system.history["losses"][-1], 4)
    print(format_table(report))
    print(f"wall {report['wall_seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
