"""The ``recsieve bench`` command: its options and what runs them (:func:`recsieve.bench.run_bench`)."""

from __future__ import annotations

import argparse

from recsieve.embedding import AUTO_BACKEND, EMBEDDING_BACKENDS
from recsieve.errors import InvalidInputError

__all__ = ["add_bench_arguments", "cmd_bench"]


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``recsieve bench``, documented."""
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors and smaller loads (a few minutes) "
                        "instead of 10k/100k/1M (about 15-20 minutes on 2 cores)")
    parser.add_argument("--json", help="write the full result JSON here")
    parser.add_argument("--plots", help="write PNG plots (latency CDF per stage, recall vs latency) into this folder")
    parser.add_argument("--threads", type=int, default=2, help="threads pinned for FAISS and torch during the run (default 2)")
    parser.add_argument("--sections", help="comma-separated subset of the sections (index, engine, rerank, processes, and any "
                        "added since: see recsieve.bench.SECTIONS); default: index, engine, rerank")
    parser.add_argument("--reranker", help="a trained model folder for the engine (default: the bench trains a small "
                        "context model and its ranking head on its generated users and serves them)")
    parser.add_argument("--quality", help="an evaluation report (recsieve evaluate --json) with a recsieve row trained "
                        "with the context model: gives rerank_ndcg_ratio (the fine sieve's NDCG@10 over the best other "
                        "re-ranker's in that report: recsieve-without-cross-encoder or recsieve-fast)")
    parser.add_argument("--index-data", choices=("clustered", "text"), default="clustered",
                        help="what the index section searches: clustered (generated gaussian clusters, the default) or "
                        "text (MiniLM vectors of generated item texts, embedded once with the auto backend and cached: "
                        "about 25 minutes for the full run's 1M texts on 2 cores)")
    parser.add_argument("--vector-cache", help="folder caching the text vectors of --index-data text (default "
                        "$XDG_CACHE_HOME/recsieve/bench-vectors)")
    parser.add_argument("--text-corpus", help="with --index-data text: a UTF-8 file of real texts, one per line (e.g. "
                        "product descriptions); the texts are then walks of 6-18 words along its word bigrams instead of "
                        "the generated catalog's templated texts")
    parser.add_argument("--index-sizes", help="comma-separated index sizes (default 10000,100000,1000000; quick "
                        "10000,100000)")
    parser.add_argument("--hnsw-max-size", type=int, help="the largest size the index section builds HNSW at (default "
                        "100000: at 1M its build takes many minutes on 2 cores)")
    parser.add_argument("--hnsw-ef-construction", type=int, help="HNSW efConstruction at every size (default 200, the "
                        "engine's, up to 20k items and 100 above, to keep the full run short)")
    parser.add_argument("--embedding-backend", default=AUTO_BACKEND, choices=(AUTO_BACKEND, *EMBEDDING_BACKENDS),
                        help="how the engine section's bi-encoder runs (default auto, the engine's: the fastest "
                        "installed that keeps fp32's neighbours); the JSON records the one it resolved to")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    r = parser.add_argument_group("the ray section (needs recsieve[ray])")
    r.add_argument("--ray", metavar="ADDRESS", help="a Ray cluster (default: a local Ray started and stopped here)")
    r.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray (default 2)")
    r.add_argument("--ray-items", type=int, help="generated catalog items (quick 500, full 5,000)")
    r.add_argument("--ray-users", type=int, help="generated users with histories (quick 200, full 2,000)")
    r.add_argument("--actors", help="embedding actor counts to build with (default 1,2)")
    r.add_argument("--replicas", help="replica counts to serve with, 1 among them (default 1,2)")
    r.add_argument("--clients", type=int, help="concurrent HTTP clients (default 4)")
    r.add_argument("--serve-seconds", type=float, help="seconds of HTTP load per replica count (quick 5, full 15)")
    r.add_argument("--visibility-samples", type=int, help="events timed to another replica (quick 30, full 90)")
    r.add_argument("--rounds", type=int, help="build rounds, order rotated (quick 1, full 2)")
    r.add_argument("--ray-embedder", choices=("model", "hash"), help="model: the config's sentence-transformers "
                   "model (default); hash: a hashing stand-in (the mechanics only)")
    r.add_argument("--ray-journal", help="a Redis journal URL for the served directory, a new stream "
                   "(default: journal.sqlite)")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark as the options ask."""
    from recsieve.bench import run_bench

    sections = tuple(s.strip() for s in args.sections.split(",")) if args.sections else None
    kwargs: dict = {"sections": sections} if sections else {}
    if args.index_sizes:
        try:
            kwargs["sizes"] = tuple(int(x) for x in args.index_sizes.split(","))
        except ValueError:
            raise InvalidInputError("index_sizes", args.index_sizes, "expected comma-separated integers") from None
    if sections and "ray" in sections:
        from recsieve.bench.on_ray import RaySettings

        def counts(text: str | None) -> tuple | None:  # "1,2" -> (1, 2); a non-number is named by RaySettings
            return None if text is None else tuple(int(x) if x.strip().isdigit() else x.strip() for x in text.split(","))

        kwargs["ray"] = RaySettings.preset(
            args.quick, address=args.ray, num_cpus=args.ray_cpus, items=args.ray_items, users=args.ray_users,
            actors=counts(args.actors), replicas=counts(args.replicas), clients=args.clients,
            load_seconds=args.serve_seconds, visibility_samples=args.visibility_samples, rounds=args.rounds,
            embedder=args.ray_embedder, journal=args.ray_journal)
    run_bench(quick=args.quick, json_out=args.json, plots_dir=args.plots, threads=args.threads,
              reranker_model=args.reranker, quality_report=args.quality, progress=not args.quiet,
              index_data=args.index_data, vector_cache=args.vector_cache, text_corpus=args.text_corpus,
              hnsw_max_size=args.hnsw_max_size, embedding_backend=args.embedding_backend,
              ef_construction=args.hnsw_ef_construction, **kwargs)
    return 0
