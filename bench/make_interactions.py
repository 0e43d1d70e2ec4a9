"""Write a synthetic interaction set in ``recsieve evaluate --dataset custom``'s format.

Sized by default about like the largest of UniSRec's Amazon sets (Office: ~87,000 users, ~26,000 items,
~650,000 events, 5+ events a user, most users short), to measure what a catalog and a log of
that size cost to train and evaluate. No dataset is copied: items are composed from word lists
(a title, a brand, three category levels), a user's next item is from the previous
item's category (60%), from one of the user's two home categories (25%) or from anywhere (15%),
drawn by a Zipf popularity within the category. It is far easier to predict than real data
(quality figures on it say nothing about real sets); timings and memory are what it is for.
Deterministic for a seed.

    python bench/make_interactions.py --out DIR [--users 87000] [--items 26000] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

STEMS = ["pen", "desk", "ink", "file", "tape", "clip", "note", "card", "lab", "box", "pad", "tone", "mark", "seal",
         "ring"]
ENDS = ["ora", "ix", "ex", "on", "ia", "um", "ar", "el", "o", "us", "ent", "ine"]
DAY = 86_400


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write items.jsonl and interactions.csv to")
    ap.add_argument("--users", type=int, default=87_000, help="number of users (default %(default)s)")
    ap.add_argument("--items", type=int, default=26_000, help="number of items (default %(default)s)")
    ap.add_argument("--categories", type=int, default=400, help="number of leaf categories (default %(default)s)")
    ap.add_argument("--mean-length", type=float, default=7.5,
                    help="mean events a user: 5, plus a geometric count of mean (this - 4) (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    args = ap.parse_args(argv)
    if args.mean_length <= 5:
        ap.error("--mean-length must be above 5")
    rng = np.random.default_rng(args.seed)
    words = [s + e for s in STEMS for e in ENDS]
    brands = [f"Brand{w.capitalize()}" for w in words[:120]]
    args.out.mkdir(parents=True, exist_ok=True)
    cat_of = rng.integers(0, args.categories, args.items)
    pop = np.minimum(rng.zipf(1.3, args.items).astype(np.float64), 5000)
    with open(args.out / "items.jsonl", "w", encoding="utf-8") as fh:
        for i in range(args.items):
            c = int(cat_of[i])
            w = rng.choice(words, 4)
            record = {"id": f"B{i:09d}",
                      "title": f"{brands[c % 120]} {w[0]} {w[1]} {words[c % len(words)]} model {i % 97}",
                      "categories": ["Office Products", f"Group {c // 20}", f"Kind {c}"],
                      "attributes": {"brand": brands[c % 120]}}
            fh.write(json.dumps(record) + "\n")
    members = [np.flatnonzero(cat_of == c) for c in range(args.categories)]
    within = [pop[m] / pop[m].sum() if len(m) else None for m in members]
    overall = pop / pop.sum()
    lengths = 5 + rng.geometric(1.0 / (args.mean_length - 4.0), args.users) - 1
    events = 0
    with open(args.out / "interactions.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["user_id", "item_id", "ts"])
        for u in tqdm(range(args.users), desc="users", unit="user"):
            home = rng.integers(0, args.categories, 2)
            ts = 1.3e9 + rng.integers(0, 3e8)
            prev = rng.choice(args.items, p=overall)
            for _ in range(lengths[u]):
                r = rng.random()
                c = cat_of[prev] if r < 0.6 else rng.choice(home) if r < 0.85 else rng.integers(0, args.categories)
                if within[c] is None:
                    continue
                prev = members[c][rng.choice(len(members[c]), p=within[c])]
                ts += DAY * rng.integers(0, 30)  # day-granular: same-day events tie, as in Amazon's logs
                out.writerow([f"U{u}", f"B{prev:09d}", int(ts)])
                events += 1
    print(f"wrote {args.items} items and {events} events of {args.users} users to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
