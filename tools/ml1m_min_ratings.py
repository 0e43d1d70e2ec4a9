"""Write ML-1M restricted to items with at least N ratings as a `custom` evaluation folder.

SASRec's preprocessed ``ml-1m.txt`` (the file the published SASRec / BERT4Rec figures use) drops
items with fewer than 5 ratings: 3,416 items, 999,611 ratings. This writes the same item set
from the shared ML-1M folder (each user's order kept; ``ts`` is the position in that order), so
``recsieve evaluate --dataset custom --data-dir OUT`` ranks what the published figures rank.

Run: python tools/ml1m_min_ratings.py ../shared/data/ml-1m OUT [--min-ratings 5]
"""

from __future__ import annotations

import argparse
from collections import Counter

from recsieve.evaluation.datasets import load_ml1m, write_custom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ml1m", help="the ML-1M folder (sequences.tsv or ratings*.dat.gz, movies.dat)")
    ap.add_argument("out", help="the folder to write interactions.csv and items.jsonl into")
    ap.add_argument("--min-ratings", type=int, default=5, help="keep items with at least this many ratings (5)")
    args = ap.parse_args()
    ds = load_ml1m(args.ml1m)
    counts = Counter(i for seq in ds.sequences for i in seq)
    keep = {i for i, c in counts.items() if c >= args.min_ratings}
    kept = [[ds.item_ids[i] for i in seq if i in keep] for seq in ds.sequences]
    write_custom(args.out, (ds.items[i] for i in sorted(keep)), zip(ds.user_ids, kept, strict=True))
    n = sum(len(seq) for seq in kept)
    print(f"{len(keep):,} items, {n:,} interactions, {len(ds.user_ids):,} users -> {args.out}")


if __name__ == "__main__":
    main()
