"""The ``engine`` section of ``recsieve bench``: an engine end to end, through its public API.

An :class:`~recsieve.engine.engine.Engine` over the demo catalog plus generated items and users
(:class:`~recsieve.bench.common.SyntheticUsers`). Without a configured re-ranker it records a
second population of generated users with longer histories and trains the context model with
:func:`~recsieve.training.train_engine` (a small, time-boxed encoder, the candidate scorer and
the ranking head that stacks them, into one folder the engine then serves). Measured:
per-stage latency (context rendering, query embedding, recall, the context encoder for one
user, the candidate scorer, the fine sieve — candidate scorer + ranking head over every
feature, as serving computes it — on 200 and on 100 recalled candidates, the cross-encoder when
one is configured), cold requests, throughput of uncached requests with 1/2/4/8 caller threads,
and the cache figures of :mod:`recsieve.bench.cache` (cache hit, Zipf load, event -> refreshed
cached list). It also returns (context, item text) pairs for the ``rerank`` section.
"""

from __future__ import annotations

import random
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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

__all__ = ["CONTEXT_MAX_LEN", "engine_section"]

#: The events the bench's context model reads (its width is the library's default).
CONTEXT_MAX_LEN = 50


def engine_section(cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str],
                   reranker_model: str | None, workdir: Path
                   ) -> tuple[dict[str, Any], dict[str, list[float]], list[tuple[str, str]]]:
    """Run the section in ``workdir``: ``(result, latency samples per stage, rerank pairs)``."""
    from recsieve.embedding import SentenceTransformerEmbedder
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

    rng = random.Random(seed)
    bar.step("engine: catalog")
    embedder = SentenceTransformerEmbedder(backend=cfg["embedding_backend"])
    items, demo_count = _catalog(cfg["engine_items"], seed)
    config = EngineConfig(index="hnsw", cache="memory", refresh_threads=1, reranker_model=reranker_model or "",
                          embedding_backend=embedder.backend)
    directory = workdir / "engine"
    engine = Engine.create(directory, config, embedder=embedder)
    res: dict[str, Any] = {"items": len(items), "catalog": f"{demo_count} demo items + {len(items) - demo_count} generated",
                           "config": {"index": config.index, "ef_search": config.ef_search,
                                      "embedding_backend": config.embedding_backend,
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
        context_users: list[str] = []
        if not reranker_model:
            res["context_model"], context_users = _train_context(engine, pop, cfg, seed, workdir, bar, notes)

        _stage_latencies(engine, pop, nreq, sw, bar, notes)
        res["context_stages"] = _context_stages(engine, pop, context_users or pop.users, nreq, sw, bar, notes)
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
        serving_config = engine.config  # names the model folder trained above, if any
    finally:
        engine.close()

    bar.step("engine: uncached throughput")
    uncached = serving_config.replace(cache="none", refresh_threads=0)
    res["throughput_uncached"], pairs = _uncached(directory, embedder, uncached, pop, cfg, seed)
    return res, sw.samples, pairs


def _catalog(generated: int, seed: int) -> tuple[list[Any], int]:
    """The bundled demo items followed by ``generated`` synthetic ones; (items, demo count)."""
    from recsieve.items_io import read_items

    with resources.as_file(resources.files("recsieve") / "data" / "demo_items.jsonl") as path:
        demo = read_items(path)
    return demo + synthetic_items(generated, seed), len(demo)


def _train_context(engine: Engine, pop: SyntheticUsers, cfg: dict[str, Any], seed: int, workdir: Path,
                   bar: ProgressBar, notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The context model: ``cfg["context_users"]`` more generated users with longer histories
    (``cfg["context_events"]`` events each) are recorded, then
    :func:`~recsieve.training.train_engine` trains an encoder (the library's width,
    ``training.model.CONTEXT_DIM``; the last 50 events; ``cfg["context_budget_s"]`` seconds at
    most), the candidate scorer (half that budget) and
    the ranking head that stacks them (on the last step of ``cfg["context_head_users"]`` users),
    and switches the engine to the folder. Returns the
    training figures and the new users' ids."""
    import torch

    from recsieve.training import train_engine
    from recsieve.training.context_model import TrainConfig

    bar.step("engine: context users")
    rng = pop.rng
    lo, hi = cfg["context_events"]
    users = [f"c{i:05d}" for i in range(cfg["context_users"])]
    events = [ev for u in users for ev in pop.history(u, rng.randint(lo, hi))]
    secs, _ = timed(lambda: engine.record(events))
    bar.step("engine: context model")
    budget = float(cfg["context_budget_s"])
    encoder = TrainConfig(epochs=cfg["context_epochs"], budget_s=budget, valid_users=256, seed=seed)
    # one held-out step per user: the head learns from each sampled user's last step
    report = train_engine(engine, workdir / "model", steps_per_user=1, users=cfg["context_head_users"],
                          encoder=encoder, max_len=CONTEXT_MAX_LEN,
                          scorer_steps=1, scorer_epochs=2, scorer_budget_s=budget / 2,
                          seed=seed, progress=False)
    runtime = engine.serving_model.context
    head = engine.ranking_head
    notes.append("the engine serves a context model trained in this run on generated users (encoder, candidate "
                 "scorer and ranking head, time-boxed): speed figures only, its quality on real data comes "
                 "from the evaluation harness")
    enc = report["encoder"]
    return {
        "users": len(users), "events": len(events), "record_events_per_s": len(events) / secs,
        "dim": runtime.model.settings.dim, "max_len": CONTEXT_MAX_LEN, "encoder_budget_s": budget,
        "encoder": {k: v for k, v in enc.items() if isinstance(v, (int, float, str, bool)) or v is None},
        "encoder_users": report["encoder_users"], "scorer_examples": report.get("scorer_examples", 0),
        "scorer": {k: v for k, v in (report.get("scorer") or {}).items()
                   if isinstance(v, (int, float, str, bool)) or v is None},
        "head": report["head"], "head_features": list(head.features) if head is not None else [],
        "seconds": report["seconds"],
        # serving threads: the context model runs its encoder and scorer on its own torch thread count
        "inference_threads": None if runtime is None else runtime.model.threads,
        "torch_threads_pinned": torch.get_num_threads(),
    }, users


def _stage_latencies(engine: Engine, pop: SyntheticUsers, nreq: int, sw: Stopwatch, bar: ProgressBar,
                     notes: list[str]) -> None:
    """Single requests split into stages: context, embed, recall, embed_1_thread and rerank
    (with a cross-encoder)."""
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


def _context_stages(engine: Engine, pop: SyntheticUsers, users: list[str], nreq: int, sw: Stopwatch,
                    bar: ProgressBar, notes: list[str]) -> dict[str, Any]:
    """The context model's serving stages for ``nreq`` users drawn from ``users``, each on its
    own recall (:meth:`~recsieve.engine.engine.Engine.recall_stage`, ``recall_n`` candidates):

    ``context_encoder``
        :meth:`ContextRuntime.user_vector` — the encoder over the user's last events, as the
        context channel calls it once per request (the channel keeps it in ``request.memo``;
        this call bypasses that cache).
    ``candidate_scorer``
        :meth:`ContextRuntime.cross_scores` of all recalled candidates alone.
    ``fine_sieve``
        ``head.score(engine.features(view, recalled))``: every feature of every recalled
        candidate, the candidate scorer's and the encoder's scores included, then the ranking
        head — what serving runs after recall (the user vector is already in the memo, as in
        serving, where recall computed it).
    ``fine_sieve_100``
        The same on a recall of 100 candidates (the speed-up against ``CrossEncoder.predict``
        on 100 pairs).
    ``fine_sieve_1_thread``
        ``fine_sieve`` again with the process's torch thread count set to 1 for the stage (the
        encoder and the scorer always run on the model's own count; whatever else touches torch
        in the features runs on the process's), to show what the thread count costs.
    """
    import torch

    serving = engine.serving_model
    runtime, head = serving.context, serving.head
    if runtime is None or head is None:
        notes.append("context_encoder_p95_ms / fine_sieve_p95_ms are null: the serving model has no "
                     + ("context model" if runtime is None else "ranking head"))
        return {}
    bar.step("engine: context model stages")
    rng = pop.rng
    counts: dict[str, list[int]] = {"fine_sieve": [], "fine_sieve_100": []}
    events_read: list[int] = []
    max_len = runtime.model.settings.max_len
    for i in range(nreq + 10):  # the first 10: warm-up, not timed
        view = engine.users.get(rng.choice(users))
        timer = sw if i >= 10 else Stopwatch()
        recalled = engine.recall_stage(view)
        request, rows = recalled.request, recalled.cands.rows
        # each stage alone from the request (a fresh memo: its context is read again, as recall read it first)
        timer.run("context_encoder", lambda r=request: runtime.user_vector(replace(r, memo={})))
        timer.run("candidate_scorer", lambda r=request, x=rows: runtime.cross_scores(replace(r, memo={}), x))
        timer.run("fine_sieve", lambda v=view, r=recalled: head.score(engine.features(v, r)))
        recalled_100 = engine.recall_stage(view, RERANK_CANDIDATES)
        timer.run("fine_sieve_100", lambda v=view, r=recalled_100: head.score(engine.features(v, r)))
        if i >= 10:
            counts["fine_sieve"].append(len(rows))
            counts["fine_sieve_100"].append(len(recalled_100.cands.rows))
            events_read.append(min(max_len, sum(1 for e in request.history if e.weight > 0)))
    _fine_sieve_one_thread(engine, head, users, nreq, rng, sw)
    return {
        "requests": nreq, "recall_n": engine.config.recall_n,
        "candidates_mean": {k: float(np.mean(v)) for k, v in counts.items()},
        "events_read_mean": float(np.mean(events_read)), "max_len": max_len,
        "inference_threads": runtime.model.threads,
        "what": {"context_encoder": "ContextRuntime.user_vector: the encoder over the user's last events",
                 "candidate_scorer": "ContextRuntime.cross_scores over the recalled candidates",
                 "fine_sieve": "head.score(engine.features(view, recalled)) over recall_n candidates: every "
                               "feature (candidate scorer and encoder scores included) + the ranking head",
                 "fine_sieve_100": "the same over a recall of 100 candidates",
                 "fine_sieve_1_thread": "fine_sieve with the process's torch threads set to 1"},
        "torch_threads": torch.get_num_threads(),
    }


def _fine_sieve_one_thread(engine: Engine, head: Any, users: list[str], nreq: int, rng: random.Random,
                           sw: Stopwatch) -> None:
    """``fine_sieve`` with torch on one intra-op thread for the whole stage (then restored)."""
    import torch

    pinned = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(nreq + 5):
            view = engine.users.get(rng.choice(users))
            recalled = engine.recall_stage(view)
            timer = sw if i >= 5 else Stopwatch()
            timer.run("fine_sieve_1_thread", lambda v=view, r=recalled: head.score(engine.features(v, r)))
    finally:
        torch.set_num_threads(pinned)


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
