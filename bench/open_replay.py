"""Open and replay times of a generated engine directory (issue 17, item 2).

Generates an engine of N items (random 384-d vectors, FAISS flat index: no model, no graph
build) and M events of U users, saving a snapshot after the first S events, then times
``Engine.open``: reading the snapshot (``Store._install_snapshot``: checks, catalog, vectors,
index, users, statistics) and replaying the journal after it (``Store._replay``: users, items,
recall statistics). CPU seconds (this process) and wall seconds are both reported: on a shared,
busy machine the CPU figure is the one to compare.

    python bench/open_replay.py generate --dir /tmp/eng --items 100000 --events 1000000 --snapshot-after 900000
    python bench/open_replay.py open --dir /tmp/eng               # prints one JSON line
    python bench/open_replay.py downgrade --src /tmp/eng --dst /tmp/eng-old
    python bench/open_replay.py save --dir /tmp/eng               # open, save (snapshot at the head), close

``downgrade`` rewrites a copy in the format before snapshot statistics (JSONL catalog and
users, no ``statistics.npz``, sha256-only manifest), so the code before this change can open it: run
``open`` with that code (``PYTHONPATH=<old checkout>``) for the "before" figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DIM = 384


class RandomEmbedder:
    """Random unit vectors (seeded by the text), so nothing is downloaded or run."""

    dim = DIM

    def embed(self, texts, *, show_progress=None):
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(DIM, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def generate(args: argparse.Namespace) -> None:
    from recsieve import Engine, EngineConfig, Event, Item

    rng = random.Random(0)
    config = EngineConfig(index="flat", refresh_threads=0, cache="none")
    eng = Engine.create(args.dir, config, embedder=RandomEmbedder())
    cats = ["kitchen", "books", "toys", "garden", "music", "outdoor", "clothing", "electronics"]
    t0 = time.perf_counter()
    for start in range(0, args.items, 20_000):
        eng.upsert_items([Item(f"it-{k:07d}", title=f"item number {k}", categories=(cats[k % 8],),
                               metadata={"price": round(rng.uniform(5, 500), 2), "year": 1990 + k % 37})
                          for k in range(start, min(start + 20_000, args.items))])
    print(f"{args.items} items in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    # Zipf-like item popularity, users of very different activity, mostly positive kinds.
    weights = 1.0 / np.arange(1, args.items + 1) ** 0.8
    picks = np.random.default_rng(1).choice(args.items, size=args.events, p=weights / weights.sum())
    users = np.random.default_rng(2).zipf(1.3, size=args.events) % args.users
    kinds = ["click"] * 5 + ["view"] * 3 + ["purchase", "skip", "rating", "dislike"]
    t0 = time.perf_counter()
    done = 0
    while done < args.events:
        end = min(done + 20_000, args.events)
        if done < args.snapshot_after <= end:
            end = args.snapshot_after
        batch = []
        for i in range(done, end):
            kind = kinds[i % len(kinds)]
            batch.append(Event(f"user-{users[i]}", f"it-{picks[i]:07d}", kind, ts=1e9 + i,
                               weight=float(1 + i % 5) if kind == "rating" else None))
        eng.record(batch)
        done = end
        if done == args.snapshot_after:
            eng.save()
            print(f"snapshot at {done} events", file=sys.stderr)
    print(f"{args.events} events in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    eng.close()


def timed_open(args: argparse.Namespace) -> None:
    from recsieve import Engine
    from recsieve.engine.store import Store

    spent: dict[str, list[float]] = {"install_snapshot": [0.0, 0.0], "replay": [0.0, 0.0]}

    def timing(name, method):
        def wrapper(self, *a, **kw):
            c, w = time.process_time(), time.perf_counter()
            try:
                return method(self, *a, **kw)
            finally:
                spent[name][0] += time.process_time() - c
                spent[name][1] += time.perf_counter() - w
        return wrapper

    Store._install_snapshot = timing("install_snapshot", Store._install_snapshot)
    Store._replay = timing("replay", Store._replay)
    c, w = time.process_time(), time.perf_counter()
    eng = Engine.open(args.dir, embedder=RandomEmbedder())
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    out = {
        "dir": str(args.dir), "items": len(eng.catalog), "events": _count_events(args.dir),
        "snapshot_seq": eng._store.snapshot_seq, "applied_seq": eng.applied_seq,
        "open_cpu_s": round(cpu, 2), "open_wall_s": round(wall, 2),
        **{f"{k}_cpu_s": round(v[0], 2) for k, v in spent.items()},
        **{f"{k}_wall_s": round(v[1], 2) for k, v in spent.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    eng.close()
    print(json.dumps(out))


def _count_events(directory: Path) -> int:
    import sqlite3

    with sqlite3.connect(Path(directory) / "journal.sqlite") as db:
        return db.execute("SELECT count(*) FROM events").fetchone()[0]


def save(args: argparse.Namespace) -> None:
    from recsieve import Engine

    eng = Engine.open(args.dir, embedder=RandomEmbedder())
    c, w = time.process_time(), time.perf_counter()
    eng.save()
    print(json.dumps({"save_cpu_s": round(time.process_time() - c, 2), "save_wall_s": round(time.perf_counter() - w, 2)}))
    eng.close()


def downgrade(args: argparse.Namespace) -> None:
    from recsieve.catalog import Catalog
    from recsieve.engine.users import UserStore

    shutil.copytree(args.src, args.dst)
    manifest_path = Path(args.dst) / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    gen = Path(args.dst) / manifest["generation"]
    if (gen / "catalog" / "catalog.parquet").exists():
        cat = Catalog.load(gen / "catalog")
        (gen / "catalog" / "catalog.parquet").unlink()
        cat.save(gen / "catalog", format="jsonl")
    if (gen / "users" / "users.npz").exists():
        users = UserStore(manifest["meta"]["dim"], recent_window=10**6)
        users.load(gen / "users")
        (gen / "users" / "users.npz").unlink()
        users.save(gen / "users", format="jsonl")
    (gen / "statistics.npz").unlink(missing_ok=True)
    manifest["meta"].pop("statistics", None)
    files = {}
    for p in sorted(gen.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            files[p.relative_to(gen).as_posix()] = {"size": p.stat().st_size, "sha256": h.hexdigest()}
    manifest["files"] = files
    manifest_path.write_text(json.dumps(manifest, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--dir", type=Path, required=True)
    g.add_argument("--items", type=int, default=100_000)
    g.add_argument("--events", type=int, default=1_000_000)
    g.add_argument("--users", type=int, default=6_000)
    g.add_argument("--snapshot-after", type=int, default=900_000, help="events before the snapshot")
    g.set_defaults(func=generate)
    o = sub.add_parser("open")
    o.add_argument("--dir", type=Path, required=True)
    o.set_defaults(func=timed_open)
    s = sub.add_parser("save")
    s.add_argument("--dir", type=Path, required=True)
    s.set_defaults(func=save)
    d = sub.add_parser("downgrade")
    d.add_argument("--src", type=Path, required=True)
    d.add_argument("--dst", type=Path, required=True)
    d.set_defaults(func=downgrade)
    args = ap.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
