"""Latency benchmark harness behind ``recsieve bench``: JSON figures, PNG plots, a text summary.

:func:`run_bench` measures, after warm-up and with FAISS/torch thread counts pinned for the run
(and restored after), three sections, one module each:

``index`` (:mod:`recsieve.bench.index`)
    FAISS flat/HNSW/IVF and LanceDB on synthetic clustered vectors (or, with ``index_data="text"``,
    MiniLM vectors of generated item texts): build time, single-query latency and recall@100
    against exact search over each index's search knob.
``engine`` (:mod:`recsieve.bench.engine`, with :mod:`recsieve.bench.cache`)
    An engine over the demo catalog plus generated items and users, through its public API,
    serving a context model trained in the run (:func:`~recsieve.training.train_engine`):
    per-stage latency (the context encoder for one user: ``context_encoder_p95_ms``; the fine
    sieve — candidate scorer + ranking head — on 200 candidates: ``fine_sieve_p95_ms``), cold
    (``cold_p95_ms``) and hot end-to-end requests, throughput with 1/2/4/8 caller threads, cache
    hit ratio under a Zipf user load, and event -> refreshed cached list latency.
``rerank`` (:mod:`recsieve.bench.rerank`)
    ``CrossEncoder.predict`` on a MiniLM cross-encoder (speed only), its achieved GFLOP/s
    against the machine's measured fp32 GEMM peak (``rerank_mfu``), each lever's speed, and
    ``rerank_speedup_vs_naive``: ``predict`` on 100 pairs / the fine sieve on 100 candidates.
``processes`` (:mod:`recsieve.bench.processes`; run only when named in ``sections``)
    Several processes on one engine directory: the empty tail check on the request path,
    cross-process visibility latency, and ``recommend`` throughput with 1/2/4 worker processes.
``scale`` (:mod:`recsieve.bench.scale`; run only when named in ``sections``)
    build-index items/s per embedding backend against fp32 in the same run, with each
    backend's neighbour recall and the CPU's instruction set.
``ray`` (:mod:`recsieve.bench.on_ray`; run only when named in ``sections``; needs ``recsieve[ray]``)
    On a local Ray (or a cluster): build items/s with 1 and 2 embedding actors against the
    single-process build, serving requests/s and p50/p95/p99 over HTTP with 1 and 2 Ray Serve
    replicas, and event -> visible-on-another-replica latency.

Shared helpers and synthetic data are in :mod:`recsieve.bench.common`, the index section's text
vectors in :mod:`recsieve.bench.text_vectors`, the command's options in :mod:`recsieve.bench.cli`;
the summary, plots and
``rerank_ndcg_ratio`` (the fine sieve's NDCG@10 over the best other re-ranker's, from an
evaluation report) in :mod:`recsieve.bench.report`. This is a measuring tool, not
request-path code: it sets process-wide thread counts while it runs. Figures from a machine
shared with other work are noisy; the JSON records the load average before and after each
section.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsieve.bench.common import (
    DIM,
    RECALL_TARGET,
    RERANK_CANDIDATES,
    K,
    ProgressBar,
    clustered_vectors,
    exact_topk,
    latency_summary,
    load_average,
    machine_info,
    pinned_threads,
    recall_at_k,
)
from recsieve.bench.engine import engine_section
from recsieve.bench.index import (
    HNSW_EF,
    INDEX_DATA,
    IVF_NPROBE,
    LANCE_EF,
    index_section,
    pick_default,
)
from recsieve.bench.on_ray import RaySettings, plot_ray, ray_section
from recsieve.bench.processes import processes_section
from recsieve.bench.report import format_summary, quality_ratio, write_plots
from recsieve.bench.rerank import encoder_flops, fallback_pairs, gemm_peak_gflops, rerank_section
from recsieve.bench.text_vectors import read_corpus
from recsieve.embedding import AUTO_BACKEND, resolve_backend
from recsieve.errors import InvalidInputError

__all__ = [
    "DIM",
    "HEADLINE_KEYS",
    "HNSW_EF",
    "IVF_NPROBE",
    "K",
    "LANCE_EF",
    "RECALL_TARGET",
    "RERANK_CANDIDATES",
    "SECTIONS",
    "clustered_vectors",
    "encoder_flops",
    "exact_topk",
    "format_summary",
    "gemm_peak_gflops",
    "latency_summary",
    "machine_info",
    "pick_default",
    "quality_ratio",
    "recall_at_k",
    "run_bench",
]

#: Keys every result JSON carries at the top level (``None`` where not measurable yet).
HEADLINE_KEYS = (
    "rerank_speedup_vs_naive",
    "rerank_ndcg_ratio",
    "context_encoder_p95_ms",
    "fine_sieve_p95_ms",
    "cold_p95_ms",
    "hot_p99_ms",
    "recall_p99_ms",
    "recall_at_100_vs_exact",
    "rerank_mfu",
)
#: The sections :func:`run_bench` can run, in order; it runs :data:`DEFAULT_SECTIONS` unless told.
SECTIONS = ("index", "engine", "rerank", "processes", "scale", "ray")
DEFAULT_SECTIONS = ("index", "engine", "rerank")

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
    "context_users": 4000,  # generated users the context model trains on, with longer histories
    "context_events": (20, 60),
    "context_epochs": 200,
    "context_budget_s": 60.0,  # the encoder's; the candidate scorer gets half
    "context_head_users": 2000,
    "load_seconds": 3.0,
    "refresh_samples": 100,
    "visibility_samples": 200,
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
    "context_users": 2000,
    "context_events": (20, 60),
    "context_epochs": 200,
    "context_budget_s": 15.0,
    "context_head_users": 400,
    "load_seconds": 1.5,
    "refresh_samples": 30,
    "visibility_samples": 60,
    "rerank_pairs": 100,
    "rerank_repeats": 1,
}


def run_bench(
    *,
    quick: bool = False,
    json_out: str | Path | None = None,
    plots_dir: str | Path | None = None,
    threads: int = 2,
    progress: bool = True,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    sizes: Sequence[int] | None = None,
    hnsw_max_size: int | None = None,
    ef_construction: int | None = None,
    queries: int | None = None,
    lance_sizes: Sequence[int] | None = None,
    engine_items: int | None = None,
    engine_users: int | None = None,
    engine_requests: int | None = None,
    context_users: int | None = None,
    context_budget_s: float | None = None,
    load_seconds: float | None = None,
    rerank_pairs: int | None = None,
    reranker_model: str | None = None,
    quality_report: str | Path | None = None,
    seed: int = 0,
    summary: bool = True,
    ray: RaySettings | None = None,
    index_data: str = "clustered",
    vector_cache: str | Path | None = None,
    text_corpus: str | Path | None = None,
    embedding_backend: str = AUTO_BACKEND,
) -> dict[str, Any]:
    """Run the benchmark; return the result dict (also written to ``json_out`` as JSON).

    ``quick`` uses 10k and 100k vectors and smaller loads (a few minutes); the full run adds
    1M vectors (about 15 minutes on 2 cores). ``sections`` picks from :data:`SECTIONS`.
    The other keyword arguments override the preset's sizes (``sizes``: index sizes;
    ``hnsw_max_size``: the largest size HNSW is built at; ``ef_construction``: HNSW's
    efConstruction at every size (default 200, FaissIndex's and so the engine's, up to 20k items
    and 100 above, to keep the full run short);
    ``queries``: single queries per setting; ``lance_sizes``: sizes also built on LanceDB;
    ``engine_*``: generated catalog items, users and timed requests per stage;
    ``context_users``: generated users the context model trains on; ``context_budget_s``: the
    encoder's training budget, the candidate scorer's is half; ``load_seconds``: per throughput
    point; ``rerank_pairs``). ``reranker_model``: a trained re-ranker folder for the engine (its
    stage is then measured, and no context model is trained); without one, the engine trains a
    context model with :func:`~recsieve.training.train_engine` on its generated users and
    serves it, and its fine sieve on 100 candidates is timed against ``CrossEncoder.predict``
    on 100 pairs (``rerank_speedup_vs_naive``). ``index_data``: what the index section searches,
    ``"clustered"`` (generated gaussian clusters) or ``"text"`` (MiniLM vectors of generated item
    texts, embedded once into ``vector_cache``, default
    :func:`~recsieve.bench.text_vectors.default_vector_cache`): the engine section's generated
    catalog, or with ``text_corpus`` (a UTF-8 file, one text per line) word-bigram walks over
    that corpus (:class:`~recsieve.bench.text_vectors.MarkovTexts`). ``embedding_backend``: how
    the engine section's bi-encoder runs (:data:`~recsieve.embedding.EMBEDDING_BACKENDS` or
    ``"auto"``, the engine's default); the result records the one it resolved to. ``quality_report``: an
    evaluation report (``recsieve evaluate --json``) with a ``recsieve`` row trained with the context model and
    other re-rankers' rows, for ``rerank_ndcg_ratio`` (see
    :func:`~recsieve.bench.report.quality_ratio`; read before anything runs). ``plots_dir``
    receives ``latency_cdf.png``, ``recall_vs_latency.png`` and ``throughput.png`` (and ``ray.png``
    with the ``ray`` section, whose settings are ``ray``: default the quick or full
    :meth:`~recsieve.bench.on_ray.RaySettings.preset`). The headline
    keys (:data:`HEADLINE_KEYS`) are always present, ``None`` where not measured, with a reason
    in ``notes``.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInputError("threads", threads, "must be a positive integer")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise InvalidInputError("sections", list(sections), f"choose from {SECTIONS}")
    if "ray" in sections:  # without the extra, say so before anything runs
        from recsieve.distributed.connect import require_ray

        require_ray("data", "serve")
    cfg = _config(quick, {"sizes": sizes, "hnsw_max_size": hnsw_max_size, "ef_construction": ef_construction,
                          "queries": queries,
                          "lance_sizes": lance_sizes, "engine_items": engine_items, "engine_users": engine_users,
                          "engine_requests": engine_requests, "load_seconds": load_seconds,
                          "rerank_pairs": rerank_pairs, "context_users": context_users,
                          "context_budget_s": context_budget_s})
    if index_data not in INDEX_DATA:
        raise InvalidInputError("index_data", index_data, f"choose from {INDEX_DATA}")
    cfg["index_data"], cfg["vector_cache"] = index_data, vector_cache
    cfg["embedding_backend"] = resolve_backend(embedding_backend)
    if text_corpus is not None:
        if index_data != "text":
            raise InvalidInputError("text_corpus", str(text_corpus), "is read with index_data='text' only")
        cfg["text_corpus"] = read_corpus(text_corpus)
    quality = None
    if quality_report is not None:  # a wrong file is refused before the run, not after it
        quality = {**quality_ratio(json.loads(Path(quality_report).read_text("utf-8"))),
                   "source": str(quality_report)}

    started = time.time()
    t0 = time.perf_counter()
    notes: list[str] = []
    result: dict[str, Any] = {key: None for key in HEADLINE_KEYS}
    result.update(
        schema=1, quick=quick, threads=threads, seed=seed, sections=list(sections),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        machine=machine_info(threads), load_avg={"start": load_average()}, notes=notes,
        parameters={k: v for k, v in cfg.items()
                    if not callable(v) and k not in ("vector_cache", "text_corpus")},
    )
    result["parameters"]["ef_construction_by_size"] = {str(n): cfg["ef_construction"](n) for n in cfg["sizes"]
                                                       if n <= cfg["hnsw_max_size"]}
    if ef_construction is None and any(20_000 < n <= cfg["hnsw_max_size"] for n in cfg["sizes"]):
        notes.append("HNSW efConstruction is 200 (FaissIndex's default) up to 20k items and 100 above, "
                     "to keep the run under 15 minutes on 2 cores")
    stage_samples: dict[str, list[float]] = {}
    pairs: list[tuple[str, str]] = []
    bar = ProgressBar(len(sections), progress)
    workdir = Path(tempfile.mkdtemp(prefix="recsieve-bench-"))
    try:
        with pinned_threads(threads):
            if "index" in sections:
                _run_index(result, cfg, seed, bar, notes)
                bar.advance()
            if "engine" in sections:
                stage_samples, pairs = _run_engine(result, cfg, seed, bar, notes, reranker_model, workdir)
                bar.advance()
            if "rerank" in sections:
                _run_rerank(result, cfg, seed, bar, notes, pairs, workdir)
                bar.advance()
            if "processes" in sections:
                result["processes"] = processes_section(cfg, seed, bar, notes, workdir)
                bar.advance()
            if "scale" in sections:  # build-index items/s per embedding backend against fp32
                # imported here: ``python -m recsieve.bench.scale`` (or ``.compaction``) must not
                # find its module already imported by this package (runpy warns)
                from recsieve.bench.scale import scale_section

                result["scale"] = scale_section(cfg, seed, bar, notes, workdir, quick=quick)
                bar.advance()
            if "ray" in sections:  # distributed builds and replicated serving against their baselines
                result["ray"] = ray_section(ray or RaySettings.preset(quick), seed, bar, notes, workdir)
                bar.advance()
    finally:
        bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if quality is not None:
        result["rerank_quality"] = quality
        result["rerank_ndcg_ratio"] = quality["ratio"]
        notes.append(f"rerank_ndcg_ratio: {quality['note']}")
    else:
        notes.append("rerank_ndcg_ratio is null: pass quality_report (an evaluation report with a 'recsieve' "
                     "row trained with the context model and other re-rankers' rows, e.g. "
                     "recsieve-without-cross-encoder, recsieve-fast)")
    result["load_avg"]["end"] = load_average()
    result["wall_s"] = time.perf_counter() - t0
    if plots_dir is not None:
        result["plots"] = write_plots(result, stage_samples, Path(plots_dir))
        if "ray" in result:
            result["plots"].append(plot_ray(result["ray"], Path(plots_dir)))
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if summary:
        print(format_summary(result) + "".join(f"\n{result[s]['summary']}" for s in ("processes", "ray") if s in result),
              file=sys.stdout)
    return result


def _config(quick: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset with ``overrides`` (those not ``None``) applied and checked."""
    cfg = dict(_QUICK if quick else _FULL)
    efc = overrides.pop("ef_construction", None)
    for key, value in overrides.items():
        if value is not None:
            cfg[key] = tuple(value) if key in ("sizes", "lance_sizes") else value
    for key in ("queries", "engine_items", "engine_users", "engine_requests", "rerank_pairs", "context_users",
                "hnsw_max_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise InvalidInputError(key, cfg[key], "must be a positive integer")
    for n in cfg["sizes"]:
        if isinstance(n, bool) or not isinstance(n, int) or n < K:
            raise InvalidInputError("sizes", n, f"each size must be an integer >= {K}")
    if isinstance(cfg["context_budget_s"], bool) or not cfg["context_budget_s"] > 0:
        raise InvalidInputError("context_budget_s", cfg["context_budget_s"], "must be positive seconds")
    cfg["lance_queries"] = min(cfg["queries"], 200)
    cfg["hnsw_ef"], cfg["ivf_nprobe"], cfg["lance_ef"] = HNSW_EF, IVF_NPROBE, LANCE_EF
    # building HNSW over 100k x 384 at FaissIndex's efConstruction=200 takes too long on 2 cores
    cfg["ef_construction"] = lambda n: 200 if n <= 20_000 else 100
    if efc is not None:
        if isinstance(efc, bool) or not isinstance(efc, int) or efc < 1:
            raise InvalidInputError("ef_construction", efc, "must be a positive integer")
        cfg["ef_construction"] = lambda n: efc
    return cfg


def _run_index(result: dict[str, Any], cfg: dict[str, Any], seed: int, bar: ProgressBar,
               notes: list[str]) -> None:
    load0 = load_average()
    result["index"] = index_section(cfg, seed, bar, notes)
    result["index"]["load_avg"] = {"start": load0, "end": load_average()}
    chosen = pick_default(result["index"])
    result["recall_default"] = chosen
    if chosen:
        result["recall_p99_ms"] = chosen["latency"]["p99_ms"]
        result["recall_at_100_vs_exact"] = chosen["recall_at_100"]
        if not chosen["meets_target"]:
            notes.append(f"no approximate index reached recall@100 >= {RECALL_TARGET} at "
                         f"{chosen['size']:,}; the best recall is reported")
        notes.append("recall_p99_ms / recall_at_100_vs_exact: at the largest size, the approximate "
                     "index and setting with the lowest p99 among those reaching the recall target")


def _run_engine(result: dict[str, Any], cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str],
                reranker_model: str | None, workdir: Path
                ) -> tuple[dict[str, list[float]], list[tuple[str, str]]]:
    load0 = load_average()
    eng, stage_samples, pairs = engine_section(cfg, seed, bar, notes, reranker_model, workdir)
    eng["load_avg"] = {"start": load0, "end": load_average()}
    result["engine"] = eng
    stages = eng["stages"]
    result["cold_p95_ms"] = stages["cold_request"]["p95_ms"]
    result["hot_p99_ms"] = stages["cache_hit"]["p99_ms"]
    serving = "the context model" if eng.get("context_model") else "the configured re-ranker"
    notes.append(f"cold_p95_ms: a new user with 5 events and a never-seen instruction, end to end with "
                 f"{serving} serving (instruction embedding + recall of 200 + ordering)")
    if "context_encoder" in stages:
        threads = eng["context_stages"]["inference_threads"]
        result["context_encoder_p95_ms"] = stages["context_encoder"]["p95_ms"]
        result["fine_sieve_p95_ms"] = stages["fine_sieve"]["p95_ms"]
        notes.append(f"context_encoder_p95_ms: the context encoder's user vector for one user from its last "
                     f"events (ContextRuntime.user_vector, {threads} torch thread(s)); fine_sieve_p95_ms: "
                     f"features + candidate scorer + ranking head over {eng['config']['recall_n']} recalled "
                     f"candidates, as serving orders them, torch on the run's {eng['context_stages']['torch_threads']} "
                     f"thread(s) (stage fine_sieve; fine_sieve_1_thread: the same with torch on 1 thread)")
    return stage_samples, pairs


def _run_rerank(result: dict[str, Any], cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str],
                pairs: list[tuple[str, str]], workdir: Path) -> None:
    load0 = load_average()
    rr = rerank_section(cfg, pairs or fallback_pairs(cfg["rerank_pairs"], seed), bar, notes, workdir)
    fine = result.get("engine", {}).get("stages", {}).get("fine_sieve_100")
    if fine:
        rr["fine_sieve"] = {"candidates": RERANK_CANDIDATES, "p50_ms": fine["p50_ms"], "p95_ms": fine["p95_ms"],
                            "p99_ms": fine["p99_ms"],
                            "what": "features + candidate scorer + ranking head, 100 recalled candidates"}
        result["rerank_speedup_vs_naive"] = rr["ms_per_100_pairs"] / fine["p50_ms"]
        notes.append("rerank_speedup_vs_naive: CrossEncoder.predict's time for 100 pairs (median of repeats) / the "
                     "serving fine sieve's p50 time for 100 candidates (features + candidate scorer + ranking head, "
                     "stage fine_sieve_100), both measured in this run")
    else:
        notes.append("rerank_speedup_vs_naive is null: the engine section did not run the fine sieve (no context "
                     "model serving)")
    rr["load_avg"] = {"start": load0, "end": load_average()}
    result["rerank"] = rr
    result["rerank_mfu"] = rr["mfu"]
