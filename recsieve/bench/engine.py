"""The ``engine`` section of ``recsieve bench``: an engine end to end, through its public API.

An :class:`~recsieve.engine.engine.Engine` over the demo catalog plus generated items and users
(:class:`~recsieve.bench.common.SyntheticUsers`); without a configured re-ranker it trains a
ranking head on those users and serves the fast tier. Measured: per-stage latency (context
rendering, query embedding, recall, the fast tier's ordering of 100 recalled candidates, the
cross-encoder when one is configured), cold requests, throughput of uncached requests with
1/2/4/8 caller threads, and the cache figures of :mod:`recsieve.bench.cache` (cache hit, Zipf
load, event -> refreshed cached list). It also returns (context, item text) pairs for the
``rerank`` section.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsieve.bench.cache import cache_hit_stage, event_to_refresh, zipf_load
from recsieve.bench.common import (
    RERANK_CANDIDATES,
    WISHES,
    ProgressBar,
    Stopwatch,
    SyntheticUsers,
    latency_summary,
    synthetic_items,
    throughput,
    timed,
)

if TYPE_CHECKING:
    from recsieve.embedding import Embedder
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

__all__ = ["engine_section"]


def engine_section(cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str],
                   reranker_model: str | None, workdir: Path
                   ) -> tuple[dict[str, Any], dict[str, list[float]], list[tuple[str, str]]]:
    """Run the section in ``workdir``: ``(result, latency samples per stage, rerank pairs)``."""
    from recsieve.embedding import SentenceTransformerEmbedder
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

    rng = random.Random(seed)
    bar.step("engine: catalog")
    embedder = SentenceTransformerEmbedder()
    items, demo_count = _catalog(cfg["engine_items"], seed)
    config = EngineConfig(index="hnsw", cache="memory", refresh_threads=1, reranker_model=reranker_model or "")
    directory = workdir / "engine"
    engine = Engine.create(directory, config, embedder=embedder)
    res: dict[str, Any] = {"items": len(items), "catalog": f"{demo_count} demo items + {len(items) - demo_count} generated",
                           "config": {"index": config.index, "ef_search": config.ef_search,
                                      "recall_n": config.recall_n, "rerank_n": config.rerank_n,
                                      "cache": config.cache, "refresh_threads": config.refresh_threads}}
    sw = Stopwatch()
    nreq = cfg["engine_requests"]
    try:
        report = engine.upsert_items(items, show_progress=False)
        res["build"] = {"seconds": report.seconds, "items_per_s": len(items) / report.seconds}
        pop = SyntheticUsers(items, cfg["engine_users"], rng)
        bar.step("engine: users")
        events = [ev for u in pop.users for ev in pop.history(u, rng.randint(3, 8))]
        secs, _ = timed(lambda: engine.record(events))
        res["record_events_per_s"] = len(events) / secs
        if not reranker_model:
            res["ranking_head"] = _train_head(engine, len(pop.users), workdir, bar, notes)

        _stage_latencies(engine, pop, nreq, sw, bar, notes)
        hot_users = pop.users[: min(len(pop.users), 200)]
        cache_hit_stage(engine, hot_users, rng, nreq, sw, notes)
        bar.step("engine: cold requests")
        _cold_requests(engine, pop, nreq, sw)
        res["stages"] = {name: latency_summary(s) for name, s in sw.samples.items()}

        bar.step("engine: zipf load")
        res["zipf"] = zipf_load(engine, pop, cfg["engine_users"], cfg["load_seconds"], seed, bar)
        bar.step("engine: event -> refresh")
        res["event_to_refresh"] = event_to_refresh(engine, pop, hot_users[: cfg["refresh_samples"]])
        engine.save()
    finally:
        engine.close()

    bar.step("engine: uncached throughput")
    uncached = config.replace(cache="none", refresh_threads=0)
    res["throughput_uncached"], pairs = _uncached(directory, embedder, uncached, pop, cfg, seed)
    return res, sw.samples, pairs


def _catalog(generated: int, seed: int) -> tuple[list[Any], int]:
    """The bundled demo items followed by ``generated`` synthetic ones; (items, demo count)."""
    from recsieve.items_io import read_items

    with resources.as_file(resources.files("recsieve") / "data" / "demo_items.jsonl") as path:
        demo = read_items(path)
    return demo + synthetic_items(generated, seed), len(demo)


def _train_head(engine: Engine, users: int, workdir: Path, bar: ProgressBar, notes: list[str]) -> dict[str, Any]:
    """The fast tier: a ranking head trained here on the generated users' last steps (seconds)."""
    from recsieve.training import train_engine_ranker

    bar.step("engine: ranking head")
    report = train_engine_ranker(engine, workdir / "head", users=min(users, 2000), epochs=20, progress=False)
    engine.use_model(workdir / "head", tier="fast")
    notes.append("the engine serves the fast tier: a ranking head trained in this run on the generated "
                 "users (its quality on real data comes from the evaluation harness)")
    return {k: report[k] for k in ("seconds", "train_users", "valid_users",
                                   "valid_ndcg@10_recall_order", "valid_ndcg@10_head")}


def _stage_latencies(engine: Engine, pop: SyntheticUsers, nreq: int, sw: Stopwatch, bar: ProgressBar,
                     notes: list[str]) -> None:
    """Single requests split into stages: context, embed, recall, embed_1_thread, rerank_fast
    (with a ranking head) and rerank (with a cross-encoder)."""
    rng, users = pop.rng, pop.users
    for u in users[:20]:  # warm-up: model, index, code paths
        engine.recommend(u, 10, instruction=rng.choice(WISHES))
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
        instruction = f"{rng.choice(WISHES)} ({i})"  # a new text each time: embedding is not cached
        if can_render:
            sw.run("context", lambda v=view, s=instruction: engine.render_context(v, s))
        sw.run("embed", lambda s=instruction: engine.embed_text(s))
        sw.run("recall", lambda u=u: engine.recall(u))
    _embed_one_thread(engine, rng, nreq, sw)
    head = engine.ranking_head
    if head is not None:  # the ordering stage of the fast tier alone, on 100 recalled candidates
        for _ in range(nreq):
            view = engine.users.get(rng.choice(users))
            recalled = engine.recall_stage(view, RERANK_CANDIDATES)
            sw.run("rerank_fast", lambda v=view, r=recalled: head.score(engine.features(v, r)))
    reranker = engine.reranker
    if reranker is not None:
        for _ in range(min(nreq, 50)):
            u = rng.choice(users)
            ctx = engine.render_context(engine.users.get(u), None)
            rows = engine.recall(u).rows[: engine.config.rerank_n]
            texts = [engine.item_text(int(r)) for r in rows]
            sw.run("rerank", lambda c=ctx, t=texts: reranker.score(c, t))
    else:
        notes.append("cross-encoder stage skipped: no cross-encoder configured (the engine orders by its "
                     "fast tier, or by recall without a head)")


def _embed_one_thread(engine: Engine, rng: random.Random, nreq: int, sw: Stopwatch) -> None:
    """A single short text is too little work to split: the same embeddings on one intra-op
    thread (on a loaded 2-core machine, 2 threads can be an order of magnitude slower)."""
    import torch

    pinned = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(nreq):
            instruction = f"{rng.choice(WISHES)} <{i}>"
            sw.run("embed_1_thread", lambda s=instruction: engine.embed_text(s))
    finally:
        torch.set_num_threads(pinned)


def _cold_requests(engine: Engine, pop: SyntheticUsers, nreq: int, sw: Stopwatch) -> None:
    """Cold end to end: a fresh user with history, first request (a miss), with a never-seen
    instruction (``cold_request``) and without one (``cold_request_no_instruction``)."""
    for i in range(nreq):
        u = f"cold{i:05d}"
        engine.record(pop.history(u, 5))
        instruction = f"{pop.rng.choice(WISHES)} [{i}]"
        sw.run("cold_request", lambda u=u, s=instruction: engine.recommend(u, 10, instruction=s))
        v = f"coldn{i:05d}"
        engine.record(pop.history(v, 5))
        sw.run("cold_request_no_instruction", lambda v=v: engine.recommend(v, 10))


def _uncached(directory: Path, embedder: Embedder, config: EngineConfig, pop: SyntheticUsers,
              cfg: dict[str, Any], seed: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Throughput of uncached requests (the saved engine reopened with ``config``: cache off) with
    1/2/4/8 callers, and pairs for the rerank section: a real rendered context and the user's
    recalled items."""
    from recsieve.engine.engine import Engine

    users = pop.users
    engine = Engine.open(directory, embedder=embedder, config=config)
    try:
        for u in users[:20]:
            engine.recommend(u, 10)
        rows_out = [throughput(lambda r: engine.recommend(r.choice(users), 10), threads, cfg["load_seconds"], seed)
                    for threads in (1, 2, 4, 8)]
        u = users[0]
        try:
            ctx = engine.render_context(engine.users.get(u), pop.rng.choice(WISHES))
        except ImportError:
            ctx = "; ".join(f"{e.kind} {engine.catalog.title(e.row)}" for e in engine.users.get(u).recent)
        rows = engine.recall(u, n=max(cfg["rerank_pairs"], 1)).rows[: cfg["rerank_pairs"]]
        pairs = [(ctx, engine.item_text(int(r))) for r in rows]
    finally:
        engine.close()
    return rows_out, pairs
