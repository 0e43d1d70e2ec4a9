"""What every bench section shares: constants, latency summaries, timing and progress helpers,
the machine description, pinned thread counts, and synthetic data (vectors with their exact
neighbours, catalog items, users with histories).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError
from recsieve.quantization import usable_cpus
from recsieve.types import Event, Item
from recsieve.vectors import normalize

__all__ = [
    "DIM",
    "K",
    "RECALL_TARGET",
    "RERANK_CANDIDATES",
    "WISHES",
    "ProgressBar",
    "Stopwatch",
    "SyntheticUsers",
    "clustered_vectors",
    "exact_topk",
    "latency_summary",
    "load_average",
    "machine_info",
    "pinned_threads",
    "recall_at_k",
    "synthetic_items",
    "throughput",
    "timed",
]

DIM = 384
K = 100
#: Recall the chosen HNSW setting must reach (the smallest ``ef_search`` that does is reported).
RECALL_TARGET = 0.95
#: Candidates the re-rank tiers order in the speed comparison.
RERANK_CANDIDATES = 100


# ---------------------------------------------------------------------------------- measuring


def latency_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """p50/p95/p99/mean/max in milliseconds of latencies given in seconds (``n`` samples)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise InvalidInputError("seconds", "[]", "need at least one latency sample")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "n": int(ms.size),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call of ``fn``."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


class Stopwatch:
    """Latency samples (seconds) per named stage."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn``, add its duration to ``stage``'s samples, return its result."""
        t = time.perf_counter()
        out = fn()
        self.samples.setdefault(stage, []).append(time.perf_counter() - t)
        return out


def throughput(call: Callable[[random.Random], Any], threads: int, seconds: float, seed: int) -> dict[str, Any]:
    """Requests/s of ``threads`` callers looping on ``call`` for ``seconds`` (after a short warm-up)."""
    stop = threading.Event()
    counts = [0] * threads
    lats: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        try:
            while not stop.is_set():
                t = time.perf_counter()
                call(rng)
                lats[i].append(time.perf_counter() - t)
                counts[i] += 1
        except BaseException as exc:  # report, do not hang the benchmark
            errors.append(exc)
            stop.set()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    all_lat = [x for lst in lats for x in lst]
    return {"threads": threads, "requests": sum(counts), "seconds": elapsed,
            "requests_per_s": sum(counts) / elapsed, "latency": latency_summary(all_lat or [0.0])}


class ProgressBar:
    """A tqdm bar over sections whose postfix names the current step (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc="bench", disable=not enabled, leave=True)
        self.enabled = enabled

    def step(self, text: str) -> None:
        self._bar.set_postfix_str(text[:60], refresh=True)

    def advance(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


# ---------------------------------------------------------------------------------- the machine


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python and library versions of this machine."""
    model, flags = None, []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = [f for f in value.split() if f.startswith(("avx512", "amx", "avx_vnni", "avx2"))]
    ram = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024**2, 1)
    libs = ("numpy", "faiss-cpu", "torch", "lancedb", "pyarrow", "sentence-transformers", "transformers")
    return {
        "cpu_model": model or platform.processor() or None,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "ram_gib": ram,
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
        "versions": {lib: _version(lib) for lib in libs},
    }


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, rounded (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Set FAISS (OpenMP) and torch intra-op thread counts for the run; restore them after."""
    import faiss
    import torch

    old = (faiss.omp_get_max_threads(), torch.get_num_threads())
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old[0])
        torch.set_num_threads(old[1])


# ---------------------------------------------------------------------------------- synthetic vectors


def clustered_vectors(
    n: int, n_queries: int, dim: int = DIM, *, seed: int = 0, groups: int | None = None,
    clusters: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic L2-normalised ``(base (n, dim), queries (n_queries, dim))`` float32 vectors.

    Two-level clusters, so a query's 100 nearest neighbours span several clusters at every
    size: ``groups`` random directions (default ``clip(n / 2000, 5, 500)``), each parent of
    ``clusters / groups`` cluster centres (default ``clusters = n / 50``, so a cluster holds
    fewer than 100 items); a vector is its group direction + 0.7 x its cluster centre + a
    component in a shared 32-dimensional subspace (norm ~0.5: a low intrinsic dimension, as
    text embeddings have) + isotropic noise (norm ~0.3), normalised. Queries are drawn the same
    way from another random stream, so none is in the base. Deterministic for a ``seed``;
    generated in chunks to bound memory.
    """
    for name, value in (("n", n), ("n_queries", n_queries), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, value, "must be a positive integer")
    g = groups if groups is not None else int(np.clip(n // 2000, 5, 500))
    c = max(g, clusters if clusters is not None else n // 50)
    rng = np.random.default_rng([seed, 0])
    group = normalize(rng.standard_normal((g, dim), dtype=np.float32), dim, "groups")
    centre = normalize(rng.standard_normal((c, dim), dtype=np.float32), dim, "clusters")
    centre = group[np.arange(c) % g] + 0.7 * centre  # cluster i belongs to group i % g
    rank = min(32, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].astype(np.float32)

    def draw(count: int, stream: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for chunk, start in enumerate(range(0, count, 65536)):
            m = min(65536, count - start)
            r = np.random.default_rng([seed, stream, chunk])
            x = centre[r.integers(0, c, m)]
            x += (0.5 / np.sqrt(rank)) * (r.standard_normal((m, rank), dtype=np.float32) @ basis.T)
            x += (0.3 / np.sqrt(dim)) * r.standard_normal((m, dim), dtype=np.float32)
            out[start : start + m] = normalize(x, dim, "vectors")
        return out

    return draw(n, 1), draw(n_queries, 2)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = 64) -> np.ndarray:
    """Ids ``(n_queries, k)`` of the ``k`` largest inner products, best first, by brute force in numpy."""
    k = min(k, base.shape[0])
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ base.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact ids) present in the same row of ``found``."""
    found, truth = np.asarray(found), np.asarray(truth)
    if found.shape[0] != truth.shape[0] or truth.size == 0:
        raise InvalidInputError("found", found.shape, f"must have one row per truth row {truth.shape}")
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


# ---------------------------------------------------------------------------------- synthetic catalog, users

_ADJ = ("Classic", "Modern", "Illustrated", "Compact", "Deluxe", "Vintage", "Portable", "Handmade",
        "Organic", "Wireless", "Complete", "Essential", "Pocket", "Premium", "Budget", "Family")
_NOUN = {
    "books": ("mystery novel", "poetry collection", "cookbook", "travel guide", "biography", "fantasy saga"),
    "music": ("jazz album", "piano sonatas", "folk record", "synth-pop EP", "string quartets", "blues box set"),
    "outdoors": ("hiking boots", "trail tent", "camping stove", "rain jacket", "climbing rope", "sleeping bag"),
    "kitchen": ("chef knife", "cast-iron pan", "espresso grinder", "rice cooker", "teapot", "mixing bowls"),
    "games": ("board game", "puzzle box", "card game", "strategy game", "party game", "chess set"),
}
_TOPIC = ("rainy afternoons", "long journeys", "beginners", "experts", "small apartments", "gifts",
          "winter evenings", "summer holidays", "the whole family", "late-night sessions", "old friends")
#: Plain-words requests the engine section sends as instructions.
WISHES = ("something relaxing for the weekend", "a gift under 30 dollars", "gear for a mountain trip",
          "music to focus while working", "a quick weeknight dinner idea", "a game for four players",
          "a book about history", "something for a beginner", "quiet music for reading")


def synthetic_items(n: int, seed: int) -> list[Item]:
    """``n`` generated :class:`~recsieve.types.Item` s (ids ``syn-000000``...) over five categories,
    with a title, a one-line description, a category and a price."""
    rng = random.Random(seed)
    cats = sorted(_NOUN)
    items = []
    for i in range(n):
        cat = cats[i % len(cats)]
        title = f"{rng.choice(_ADJ)} {rng.choice(_NOUN[cat])} #{i}"
        desc = f"A {title.split(' #')[0].lower()} for {rng.choice(_TOPIC)}."
        items.append(Item(id=f"syn-{i:06d}", title=title, description=desc, categories=(cat,),
                          metadata={"category": cat, "price": round(rng.uniform(3, 150), 2)}))
    return items


class SyntheticUsers:
    """Generated users over a catalog, each leaning to one category, so profiles and recall mean
    something. One seeded ``rng`` serves every draw of a run, in order."""

    def __init__(self, items: Sequence[Item], count: int, rng: random.Random) -> None:
        self.rng = rng
        self.item_ids = [it.id for it in items]
        self.by_category: dict[str, list[str]] = {}
        for it in items:
            self.by_category.setdefault(it.categories[0] if it.categories else "misc", []).append(it.id)
        self.categories = sorted(self.by_category)
        self.now = time.time()
        self.users = [f"u{i:05d}" for i in range(count)]

    def history(self, user: str, count: int) -> list[Event]:
        """``count`` view/click/cart events of ``user``, an hour apart up to now; 80% in one category."""
        rng = self.rng
        pool = self.by_category[rng.choice(self.categories)]
        return [Event(user, rng.choice(pool if rng.random() < 0.8 else self.item_ids),
                      rng.choice(("view", "click", "cart")), ts=self.now - 3600 * (count - j))
                for j in range(count)]
