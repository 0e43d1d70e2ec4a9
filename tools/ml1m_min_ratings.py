"""Write ML-1M restricted to items with at least N ratings as a `custom` evaluation folder.

SASRec's preprocessed ``ml-1m.txt`` (the file the published SASRec / BERT4Rec figures use) drops
items with fewer than 5 ratings: 3,416 items, 999,611 ratings. This writes the same item set
from the shared ML-1M folder (each user's order kept; ``ts`` is the position in that order), so
``recsieve evaluate --dataset custom --data-dir OUT`` ranks what the published figures rank.

Run: python tools/ml1m_min_ratings.py ../shared/data/ml-1m OUT [--min-ratings 5]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from recsieve.evaluation.datasets import load_ml1m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ml1m", help="the ML-1M folder (sequences.tsv or ratings*.dat.gz, movies.dat)")
    ap.add_argument("out", help="the folder to write interactions.csv and items.jsonl into")
    ap.add_argument("--min-ratings", type=int, default=5, help="keep items with at least this many ratings (5)")
    args = ap.parse_args()
    ds = load_ml1m(args.ml1m)
    counts = Counter(i for seq in ds.sequences for i in seq)
    keep = {i for i, c in counts.items() if c >= args.min_ratings}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w", encoding="utf-8") as fh:
        for i in sorted(keep):
            item = ds.items[i]
            fh.write(json.dumps({"id": item.id, "title": item.title, "description": item.description,
                                 "categories": list(item.categories), **item.metadata}) + "\n")
    n = 0
    with open(out / "interactions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "ts"])
        for user, seq in zip(ds.user_ids, ds.sequences, strict=True):
            kept = [ds.item_ids[i] for i in seq if i in keep]
            writer.writerows([user, item, t] for t, item in enumerate(kept, 1))
            n += len(kept)
    print(f"{len(keep):,} items, {n:,} interactions, {len(ds.user_ids):,} users -> {out}")


if __name__ == "__main__":
    main()
