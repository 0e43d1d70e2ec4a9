"""The ``index`` section of ``recsieve bench``: vector indexes on synthetic data.

Synthetic clustered, L2-normalised vectors (:func:`~recsieve.bench.common.clustered_vectors`;
queries come from the same distribution but are not in the base), or with ``index_data="text"``
MiniLM vectors of generated item texts (:func:`~recsieve.bench.text_vectors.text_vectors`,
cached on disk; queries are other generated texts' vectors). Per size: build time and
items/s of FAISS flat (the exact baseline), HNSW (M=32) and IVF, and LanceDB (HNSW-SQ) where
asked; single-query latency p50/p95/p99 and recall@100 against exact numpy search, over a sweep
of ``ef_search`` (HNSW, LanceDB) and ``nprobe`` (IVF), with latency ratios against flat from the
same run. :func:`pick_default` chooses the headline setting.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recsieve.bench.common import (
    DIM,
    RECALL_TARGET,
    K,
    ProgressBar,
    clustered_vectors,
    exact_topk,
    latency_summary,
    recall_at_k,
    timed,
)
from recsieve.errors import InvalidInputError

__all__ = ["HNSW_EF", "INDEX_DATA", "IVF_NPROBE", "LANCE_EF", "index_section", "pick_default"]

HNSW_EF = (100, 128, 192, 256, 384, 512)  # FAISS clamps efSearch below k to k, so start at k
IVF_NPROBE = (1, 2, 4, 8, 16, 32, 64, 128)
LANCE_EF = (100, 200, 400)


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


CLUSTERED = ("clustered_vectors: two-level gaussian clusters (groups n/2000, clusters n/50) + "
             "32-dim shared subspace + isotropic noise, L2-normalised; queries drawn apart from the base")
#: What the section can run on (``cfg["index_data"]``).
INDEX_DATA = ("clustered", "text")


def index_section(cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str]) -> dict[str, Any]:
    """Every index at every size of ``cfg["sizes"]``, on ``cfg["index_data"]`` (default
    clustered; ``text``: MiniLM vectors of generated texts cached in ``cfg["vector_cache"]``,
    the bench's catalog texts or, given ``cfg["text_corpus"]`` (a list of texts), Markov walks
    over that corpus); appends what it skipped to ``notes``."""
    data = cfg.get("index_data", "clustered")
    if data not in INDEX_DATA:
        raise InvalidInputError("index_data", data, f"choose from {INDEX_DATA}")
    out: dict[str, Any] = {
        "dim": DIM, "k": K, "recall_target": RECALL_TARGET,
        "data": CLUSTERED if data == "clustered" else None,
        "ground_truth": "exact inner-product top-100 by numpy brute force",
        "baseline": "speedup_p50_vs_flat = the faster FAISS-flat p50 (pinned threads or 1 thread) / p50",
        "sizes": {},
    }
    for n in cfg["sizes"]:
        bar.step(f"index {n:,}: data")
        nq = cfg["queries"]
        if data == "clustered":
            base, queries = clustered_vectors(n, nq, seed=seed)
        else:
            from recsieve.bench.text_vectors import MarkovTexts, text_vectors

            corpus = cfg.get("text_corpus")
            source = MarkovTexts(corpus) if corpus else None
            base, queries, info = text_vectors(n, nq, seed=seed, source=source, cache_dir=cfg.get("vector_cache"),
                                               progress=bar.enabled)
            out["data"] = {k: v for k, v in info.items() if k != "chunks_embedded"}
        out["sizes"][str(n)] = _one_size(base, queries, cfg, bar, notes)
        del base, queries
        gc.collect()
    return out


def _one_size(base: np.ndarray, queries: np.ndarray, cfg: dict[str, Any], bar: ProgressBar,
              notes: list[str]) -> dict[str, Any]:
    from recsieve.indexes.faiss_index import FaissIndex

    n, nq = len(base), len(queries)
    ids = np.arange(n, dtype=np.int64)
    gt_s, truth = timed(lambda: exact_topk(base, queries))
    # how tight the neighbourhoods are: the mean similarity of each query's 1st, 10th and 100th
    # exact neighbour (near-copies put all 100 close, where one IVF list tends to hold them)
    sims = {str(r + 1): round(float(np.mean(np.sum(base[truth[:, r]] * queries, axis=1))), 4)
            for r in (0, 9, K - 1) if r < truth.shape[1]}
    res: dict[str, Any] = {"n": n, "queries": nq, "ground_truth_s": gt_s, "neighbour_similarity": sims,
                           "indexes": {}}

    flat = _flat(n, ids, base, queries, truth, cfg, bar)
    res["indexes"]["faiss_flat"] = flat
    flat_p50 = flat["baseline_p50_ms"]

    if n <= cfg["hnsw_max_size"]:
        efc = cfg["ef_construction"](n)
        bar.step(f"index {n:,}: hnsw build (efC={efc})")
        hnsw, info = _build(lambda: FaissIndex(DIM, "hnsw", hnsw_m=32, ef_construction=efc), ids, base)
        info.update(hnsw_m=32, ef_construction=efc)
        rows = _sweep(hnsw, "ef_search", cfg["hnsw_ef"], queries, truth, flat_p50, bar, f"index {n:,}")
        res["indexes"]["faiss_hnsw"] = {**info, "settings": rows}
        del hnsw
    else:
        notes.append(f"HNSW not built at {n:,} items (over hnsw_max_size {cfg['hnsw_max_size']:,}): its build "
                     "alone would take most of the run on 2 cores; IVF covers this size")

    nlist = max(1, int(round(np.sqrt(n))))
    bar.step(f"index {n:,}: ivf build (nlist={nlist})")
    ivf, info = _build(lambda: FaissIndex(DIM, "ivf", nlist=nlist), ids, base)
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
    return res


def _flat(n: int, ids: np.ndarray, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
          cfg: dict[str, Any], bar: ProgressBar) -> dict[str, Any]:
    """FAISS flat (exact): build, and single queries on the pinned threads and on one thread."""
    import faiss

    from recsieve.indexes.faiss_index import FaissIndex

    pinned = faiss.omp_get_max_threads()
    bar.step(f"index {n:,}: flat")
    flat, info = _build(lambda: FaissIndex(DIM, "flat"), ids, base)
    flat_nq = len(queries) if n < 1_000_000 else min(len(queries), cfg["flat_queries_large"])
    rows = []
    for omp in dict.fromkeys((pinned, 1)):
        # FAISS splits one exact query over its OpenMP threads; on a busy 2-core machine that
        # fork-join can cost more than the scan, so the baseline is also timed on one thread
        faiss.omp_set_num_threads(omp)
        try:
            found, lat = _single_queries(lambda q: flat.search(q, K)[1], queries[:flat_nq])
        finally:
            faiss.omp_set_num_threads(pinned)
        rows.append(_setting_row({"omp_threads": omp}, found, lat, truth, None))
    return {**info, "settings": rows, "baseline_p50_ms": min(r["latency"]["p50_ms"] for r in rows)}


def _sweep(index: Any, knob: str, values: Sequence[int], queries: np.ndarray, truth: np.ndarray,
           flat_p50: float, bar: ProgressBar, label: str) -> list[dict[str, Any]]:
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
                 flat_p50: float, cfg: dict[str, Any], bar: ProgressBar, notes: list[str]) -> dict[str, Any]:
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


def pick_default(section: dict[str, Any]) -> dict[str, Any] | None:
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
