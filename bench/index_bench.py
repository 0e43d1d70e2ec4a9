"""Run :func:`recsieve.bench.run_bench` from the command line (index section by default).

``recsieve bench`` runs every section; this script is handy for iterating on index settings::

    python bench/index_bench.py --quick --json /tmp/index.json --plots /tmp/plots
    python bench/index_bench.py --sections index,engine,rerank --json /tmp/all.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsieve.bench import SECTIONS, run_bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k vectors, smaller loads")
    ap.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    ap.add_argument("--plots", type=Path, default=None, help="write PNG plots into this folder")
    ap.add_argument("--threads", type=int, default=2, help="FAISS and torch threads (pinned)")
    ap.add_argument("--sections", default="index", help=f"comma-separated, from {','.join(SECTIONS)}")
    ap.add_argument("--sizes", default=None, help="index sizes, e.g. 10000,100000")
    ap.add_argument("--queries", type=int, default=None, help="single queries per setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run_bench(
        quick=args.quick, json_out=args.json, plots_dir=args.plots, threads=args.threads,
        progress=not args.no_progress, sections=tuple(s for s in args.sections.split(",") if s),
        sizes=tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None,
        queries=args.queries, seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
