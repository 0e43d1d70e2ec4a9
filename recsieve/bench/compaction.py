"""Part of the ``scale`` section of ``recsieve bench`` (issue #17): ``Engine.recommend`` latency
while the vector index compacts, against its latency without a compaction, in the same run.

An engine of ``n`` generated items (:func:`~recsieve.bench.common.synthetic_items`, their vectors
drawn by :func:`~recsieve.bench.common.clustered_vectors`: no model runs) and generated users with
histories; a tenth of the items is removed (``--removed``; tombstones, below FAISS's ``compact_at``;
LanceDB rewrites a fragment when more than a tenth of its rows are deleted). Then single-caller
``recommend`` requests are timed: before, during a compaction started with
``compact(wait=False)`` (the rebuild an automatic one runs, in a background thread: for FAISS
``compact_threads`` OpenMP threads rebuilding the HNSW graph from the stored vectors; for LanceDB,
``--backend lance``, LanceDB's ``optimize`` of a copy of the table: deleted rows dropped, the ANN
index remapped, then the copy swapped in), and after.
Requests are timed during the compaction for as long as it runs; "without" pools the requests
before and after. Right after the compaction starts one item is upserted: ``write_during_ms``, and
whether the compaction was still running when that write returned.
``recommend_p99_during_vs_without_compaction`` is p99 during over p99 without (target: at most
2). On a machine shared with other work the figures are noisy: the load average is recorded at each
phase.

    python -m recsieve.bench.compaction --items 100000 --json compaction.json
    python -m recsieve.bench.compaction --backend lance --items 5000 --removed 0.11 --json compaction_lance.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import (
    DIM,
    SyntheticUsers,
    clustered_vectors,
    latency_summary,
    load_average,
    machine_info,
    pinned_threads,
    synthetic_items,
)
from recsieve.catalog import Catalog
from recsieve.engine.config import EngineConfig
from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError
from recsieve.types import Item

__all__ = ["RATIO_KEY", "compaction_latency", "format_compaction", "main"]

#: The headline figure: p99 of recommend during a compaction over its p99 without one.
RATIO_KEY = "recommend_p99_during_vs_without_compaction"
_WRITTEN_DURING = "compaction-bench-written-during"  # the id of the item upserted during the compaction


class _TableEmbedder:
    """The generated items' vectors, looked up by rendered text; any other text (none is sent by
    these requests) gets a unit vector seeded by its hash."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.dim = vectors.shape[1]
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def embed(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            row = self._rows.get(text)
            if row is not None:
                out[i] = self._vectors[row]
            else:
                seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
                v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
                out[i] = v / np.linalg.norm(v)
        return out


def _time_requests(engine: Engine, users: Sequence[str], start: int, go_on: Callable[[int], bool]) -> list[float]:
    """Seconds of recommend calls, cycling through ``users`` from ``start``, while ``go_on(calls so far)``."""
    out: list[float] = []
    while go_on(len(out)):
        user = users[(start + len(out)) % len(users)]
        t = time.perf_counter()
        engine.recommend(user, 10)
        out.append(time.perf_counter() - t)
    return out


def _layout(index: Any) -> dict[str, int]:
    """What a compaction changes in the index's layout: FAISS positions (tombstones included),
    LanceDB fragments."""
    return {name: getattr(index, name) for name in ("positions", "fragments") if hasattr(index, name)}


def compaction_latency(n_items: int, seed: int, workdir: Path, *, users: int = 300, events: int = 10,
                       requests: int = 500, index: str = "hnsw", backend: str = "faiss",
                       removed: float = 0.1) -> dict[str, Any]:
    """Recommend latency (ms) before, during and after a compaction of an ``index`` engine of the
    ``backend`` (``faiss`` or ``lance``) of ``n_items`` generated items, ``removed`` of them
    removed before, and ``users`` generated users with ``events`` events each; ``requests``: timed
    requests before and after (see the module docstring)."""
    for name, value in (("n_items", n_items), ("users", users), ("events", events), ("requests", requests)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, value, "must be a positive integer")
    if index not in ("hnsw", "ivf", "flat"):
        raise InvalidInputError("index", index, "must be hnsw, ivf or flat")
    if backend not in ("faiss", "lance"):
        raise InvalidInputError("backend", backend, "must be faiss or lance")
    if isinstance(removed, bool) or not isinstance(removed, (int, float)) or not 0 <= removed < 1:
        raise InvalidInputError("removed", removed, "must be a fraction in [0, 1)")
    items = synthetic_items(n_items, seed)
    catalog = Catalog()
    vectors, _ = clustered_vectors(n_items, 1, DIM, seed=seed)
    embedder = _TableEmbedder([catalog.render(it) for it in items], vectors)
    directory = workdir / "compaction-engine"
    engine = Engine.create(directory, EngineConfig(index=index, backend=backend, cache="none", refresh_threads=0),
                           embedder=embedder)
    try:
        t0 = time.perf_counter()
        for lo in range(0, n_items, 20_000):
            engine.upsert_items(items[lo:lo + 20_000], show_progress=False)
        build_s = time.perf_counter() - t0
        rng = random.Random(seed)
        pop = SyntheticUsers(items, users, rng)
        engine.record([ev for u in pop.users for ev in pop.history(u, events)])
        gone = [it.id for it in rng.sample(items, round(n_items * removed))]
        if gone:
            engine.remove_items(gone)  # tombstones for the compaction to drop
        vector_index = engine.index
        vector_index.wait_for_compaction()  # one the build started (LanceDB: every 64 writes)
        layout = _layout(vector_index)
        _time_requests(engine, pop.users, 0, lambda n: n < min(50, requests))  # warm-up
        load = {"before": load_average()}
        before = _time_requests(engine, pop.users, 0, lambda n: n < requests)
        load["during"] = load_average()
        t0 = time.perf_counter()
        if not vector_index.compact(wait=False):
            raise RuntimeError("a compaction was already running")  # nothing else writes here
        t1 = time.perf_counter()  # a write during the compaction: it does not wait for it
        engine.upsert_items([Item(_WRITTEN_DURING, title="An item written during the compaction")], show_progress=False)
        write_ms = (time.perf_counter() - t1) * 1000
        write_before_end = vector_index.compacting
        during = _time_requests(engine, pop.users, 0, lambda n: vector_index.compacting)
        compaction_s = time.perf_counter() - t0
        load["after"] = load_average()
        after = _time_requests(engine, pop.users, 0, lambda n: n < requests)
        layout_after = _layout(vector_index)
    finally:
        engine.close()
        shutil.rmtree(directory, ignore_errors=True)
    without = latency_summary(before + after)
    out: dict[str, Any] = {
        "items": n_items, "backend": backend, "index": index, "users": users, "events_per_user": events,
        "removed_before": len(gone), **{f"{k}_before": v for k, v in layout.items()},
        **{f"{k}_after": v for k, v in layout_after.items()},
        "compact_threads": getattr(vector_index, "compact_threads", None), "build_s": build_s,
        "compaction_s": compaction_s, "write_during_ms": write_ms, "write_returned_while_compacting": write_before_end,
        "recommend_without": without, "recommend_before": latency_summary(before),
        "recommend_after": latency_summary(after),
        "recommend_during": latency_summary(during) if during else None, "load_avg": load,
    }
    out[RATIO_KEY] = out["recommend_during"]["p99_ms"] / without["p99_ms"] if during else None
    return out


def format_compaction(res: dict[str, Any]) -> str:
    """One line: p99 during and without, their ratio."""
    during = res["recommend_during"]
    if during is None:
        return (f"compaction at {res['items']:,} items ({res.get('backend', 'faiss')} {res['index']}): "
                "over before any request was timed")
    w = res["recommend_without"]
    return (f"recommend during a compaction at {res['items']:,} items ({res.get('backend', 'faiss')} {res['index']}, "
            f"{res['compaction_s']:.1f} s, "
            f"{during['n']} requests): p50/p95/p99 {during['p50_ms']:.1f}/{during['p95_ms']:.1f}/"
            f"{during['p99_ms']:.1f} ms; without ({w['n']}): {w['p50_ms']:.1f}/{w['p95_ms']:.1f}/{w['p99_ms']:.1f} ms; "
            f"p99 ratio {res[RATIO_KEY]:.2f}; a write during it {res['write_during_ms']:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="recommend latency during a compaction of the vector index")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--index", default="hnsw", choices=("hnsw", "ivf", "flat"))
    ap.add_argument("--backend", default="faiss", choices=("faiss", "lance"))
    ap.add_argument("--removed", type=float, default=0.1, help="fraction of the items removed before the compaction")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--requests", type=int, default=500, help="timed requests before and after the compaction")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="recsieve-compaction-"))
    started = time.time()
    try:
        with pinned_threads(args.threads):
            res = compaction_latency(args.items, args.seed, workdir, users=args.users, requests=args.requests,
                                     index=args.index, backend=args.backend, removed=args.removed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res.update(machine=machine_info(args.threads), wall_s=time.time() - started,
               command="python -m recsieve.bench.compaction " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(format_compaction(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
