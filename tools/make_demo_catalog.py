"""Regenerate recsieve/data/demo_items.jsonl: the small catalog `recsieve demo` ships.

Written for recsieve (no dataset copied): 8 categories x 25 products, deterministic.
Run: python tools/make_demo_catalog.py
"""

import json
import random
from pathlib import Path

CATEGORIES = {
    "books": (
        ["novel", "cookbook", "travel guide", "poetry collection", "graphic novel"],
        ["mystery", "science fiction", "romance", "history", "fantasy"],
        "A {adj} {noun} about {theme}, {pages} pages.",
        ["a detective in foggy London", "first contact with an alien fleet", "a summer love in Lisbon",
         "the fall of ancient Rome", "a young wizard's apprenticeship"],
        (8, 35),
    ),
    "music": (
        ["vinyl album", "CD", "box set", "live recording", "EP"],
        ["jazz", "classical", "rock", "hip-hop", "folk"],
        "A {adj} {noun} with {theme}.",
        ["saxophone solos from a smoky club", "a full symphony orchestra", "loud electric guitars",
         "sharp rhymes over heavy beats", "acoustic guitar and quiet vocals"],
        (10, 60),
    ),
    "kitchen": (
        ["frying pan", "chef's knife", "espresso machine", "blender", "cutting board"],
        ["cast-iron", "stainless steel", "non-stick", "bamboo", "ceramic"],
        "A {adj} {noun} for {theme}.",
        ["searing steaks at high heat", "slicing vegetables quickly", "making cafe-style coffee at home",
         "smoothies and soups", "everyday meal prep"],
        (15, 250),
    ),
    "outdoor": (
        ["tent", "sleeping bag", "hiking backpack", "camping stove", "headlamp"],
        ["ultralight", "waterproof", "four-season", "compact", "rugged"],
        "A {adj} {noun} built for {theme}.",
        ["alpine trekking", "rainy weekend camping", "winter expeditions", "long-distance hiking",
         "night trail running"],
        (20, 400),
    ),
    "toys": (
        ["building set", "plush bear", "puzzle", "board game", "remote-control car"],
        ["colourful", "educational", "wooden", "glow-in-the-dark", "giant"],
        "A {adj} {noun} for kids who love {theme}.",
        ["dinosaurs", "space rockets", "animals on the farm", "fast racing", "pirate adventures"],
        (8, 80),
    ),
    "clothing": (
        ["t-shirt", "rain jacket", "wool sweater", "running shoes", "denim jeans"],
        ["blue", "red", "black", "green", "white"],
        "A {adj} {noun} in {theme}.",
        ["organic cotton", "recycled polyester", "merino wool", "breathable mesh", "stretch denim"],
        (12, 150),
    ),
    "electronics": (
        ["wireless headphones", "smartwatch", "bluetooth speaker", "e-reader", "webcam"],
        ["noise-cancelling", "waterproof", "budget", "premium", "portable"],
        "A {adj} {noun} with {theme}.",
        ["all-day battery life", "crystal-clear sound", "a bright high-resolution display",
         "fast USB-C charging", "voice assistant support"],
        (25, 400),
    ),
    "garden": (
        ["seed kit", "watering can", "pruning shears", "raised bed", "compost bin"],
        ["heirloom", "galvanised", "ergonomic", "cedar", "self-watering"],
        "A {adj} {noun} for {theme}.",
        ["growing tomatoes on a balcony", "a sunny herb garden", "tidy rose bushes",
         "vegetables in small yards", "turning kitchen scraps into soil"],
        (6, 120),
    ),
}


def main() -> None:
    rng = random.Random(7)
    out = []
    for cat, (nouns, adjs, desc, themes, (lo, hi)) in CATEGORIES.items():
        combos = [(a, n) for a in adjs for n in nouns]
        rng.shuffle(combos)
        for i, (adj, noun) in enumerate(combos[:25]):
            theme = themes[(i + nouns.index(noun)) % len(themes)]
            title = f"{adj.capitalize()} {noun}"
            price = round(rng.uniform(lo, hi), 2)
            out.append(
                {
                    "id": f"{cat[:3]}-{i + 1:03d}",
                    "title": title,
                    "description": desc.format(adj=adj, noun=noun, theme=theme, pages=rng.randint(150, 700)),
                    "categories": [cat],
                    "price": price,
                    "category": cat,
                    "in_stock": rng.random() > 0.15,
                }
            )
    path = Path(__file__).resolve().parent.parent / "recsieve" / "data" / "demo_items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} items to {path.name}")


if __name__ == "__main__":
    main()
