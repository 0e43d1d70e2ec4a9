"""Write N synthetic catalog items (JSONL) for index-build benchmarks.

Titles and descriptions are composed from small word lists (no dataset is copied), with
typed metadata (price, category, year, in_stock) for filters. Deterministic for a seed.

    python bench/make_items.py --n 100000 --out /tmp/items100k.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ADJECTIVES = ["compact", "rugged", "vintage", "wireless", "organic", "premium", "budget", "handmade", "portable",
              "ergonomic", "waterproof", "lightweight", "classic", "smart", "eco-friendly", "heavy-duty", "modular",
              "colourful", "minimalist", "foldable"]
NOUNS = {
    "electronics": ["headphones", "speaker", "charger", "keyboard", "monitor", "webcam", "router", "smartwatch"],
    "kitchen": ["kettle", "frying pan", "blender", "knife set", "coffee grinder", "toaster", "rice cooker"],
    "outdoor": ["tent", "backpack", "sleeping bag", "headlamp", "trekking poles", "camping stove", "cooler"],
    "books": ["novel", "cookbook", "travel guide", "biography", "poetry collection", "atlas", "comic"],
    "toys": ["puzzle", "building set", "plush bear", "board game", "kite", "train set", "doll house"],
    "clothing": ["jacket", "sweater", "sneakers", "scarf", "raincoat", "jeans", "t-shirt", "hiking boots"],
    "garden": ["watering can", "seed kit", "planter", "pruning shears", "hose reel", "compost bin"],
    "music": ["vinyl record", "ukulele", "drum pad", "microphone", "guitar strings", "metronome"],
}
USES = ["for everyday use", "for travel", "for kids", "for professionals", "for small spaces", "as a gift",
        "for rainy days", "for beginners", "for the weekend", "for long trips"]
COLOURS = ["black", "white", "red", "blue", "green", "grey", "yellow", "orange", "purple", "brown"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of items")
    ap.add_argument("--out", type=Path, required=True, help="output .jsonl path")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    cats = sorted(NOUNS)
    with open(args.out, "w", encoding="utf-8") as fh:
        for i in range(args.n):
            cat = rng.choice(cats)
            adj, noun, colour, use = rng.choice(ADJECTIVES), rng.choice(NOUNS[cat]), rng.choice(COLOURS), rng.choice(USES)
            item = {
                "id": f"syn-{i:07d}",
                "title": f"{adj.capitalize()} {colour} {noun} #{i}",
                "description": f"A {adj} {noun} in {colour}, made {use}.",
                "categories": [cat],
                "price": round(rng.uniform(5, 500), 2),
                "category": cat,
                "year": rng.randint(1990, 2026),
                "in_stock": rng.random() > 0.2,
            }
            fh.write(json.dumps(item) + "\n")
    print(f"wrote {args.n} items to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
