"""The ``processes`` section of ``recsieve bench``: several processes on one engine directory.

An engine over generated items and users (vectors from a hashing stand-in embedder of the
bi-encoder's width, 384: the mechanics measured here do not depend on what the vectors mean),
opened by this process and by worker processes started with the ``spawn`` method. Measured:

- ``empty_tail_check_us``: :meth:`~recsieve.engine.engine.Engine.catch_up` when no process wrote
  anything, the check every public call makes first (one ``PRAGMA data_version`` of the journal
  and one ``stat`` of the config file); ``data_version_us``: the pragma alone; ``head_query_us``:
  the journal's ``max(seq)`` query, the other way to check, for comparison.
- ``visibility_ms``: this process records an event for a new user while a watcher process asks
  ``recommend`` for that user back to back; from the start of ``record`` here to the end of the
  watcher's first ``recommend`` that reflects the event (it includes up to one ``recommend``
  of the watcher, ``watcher_recommend_ms``).
- ``recommend_throughput``: requests/s of 1, 2 and 4 worker processes (one thread each: FAISS
  and BLAS pinned to one thread) asking ``recommend`` for random users with the result cache
  off, and of 2 workers while this process records events (``recommend_throughput_with_writer``).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import ProgressBar, SyntheticUsers, latency_summary, synthetic_items
from recsieve.types import Event

__all__ = ["processes_section", "HashEmbedder"]

#: Worker processes per throughput point.
PROCESS_COUNTS = (1, 2, 4)


class HashEmbedder:
    """A deterministic stand-in for the bi-encoder: a hashed bag of words, 384 dimensions."""

    dim = 384

    def embed(self, texts: list[str], *, show_progress: bool | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, 0] = 1.0
            for word in text.lower().split():
                out[i, 1 + int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                  % (self.dim - 1)] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _us(seconds: list[float]) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    p50, p99 = np.percentile(us, [50, 99])
    return {"p50_us": float(p50), "p99_us": float(p99), "n": int(us.size)}


def processes_section(cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str],
                      workdir: Path) -> dict[str, Any]:
    """Run the section in ``workdir`` (see the module's docstring); return its result."""
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

    rng = random.Random(seed)
    bar.step("processes: catalog")
    items = synthetic_items(cfg["engine_items"], seed)
    pop = SyntheticUsers(items, cfg["engine_users"], rng)
    config = EngineConfig(index="flat", cache="none", refresh_threads=0)
    directory = workdir / "processes"
    engine = Engine.create(directory, config, embedder=HashEmbedder())
    res: dict[str, Any] = {"items": len(items), "users": len(pop.users),
                           "config": {"index": config.index, "recall_n": config.recall_n, "cache": config.cache},
                           "embedder": "hashing stand-in, 384 dims"}
    try:
        engine.upsert_items(items)
        engine.record([ev for u in pop.users for ev in pop.history(u, 5)])
        engine.save()

        bar.step("processes: empty tail check")
        for _ in range(1000):
            engine.catch_up()
        res["empty_tail_check_us"] = {**_us(_times(engine.catch_up, 20_000)),
                                      "what": "Engine.catch_up() with nothing new: PRAGMA data_version + stat"}
        res["data_version_us"] = {**_us(_times(engine.journal.version, 5_000)),
                                  "what": "the journal's PRAGMA data_version alone"}
        res["head_query_us"] = {**_us(_times(engine.journal.head, 5_000)),
                                "what": "the journal's max(seq) query (the alternative check), for comparison"}

        ctx = mp.get_context("spawn")
        bar.step("processes: visibility")
        res.update(_visibility(ctx, engine, directory, pop, cfg["visibility_samples"], seed))

        res["recommend_throughput"] = []
        for count in PROCESS_COUNTS:
            bar.step(f"processes: throughput, {count} workers")
            res["recommend_throughput"].append(_throughput(ctx, engine, directory, pop, count, cfg["load_seconds"],
                                                           seed, writer=False))
        bar.step("processes: throughput, 2 workers + a writer")
        res["recommend_throughput_with_writer"] = _throughput(ctx, engine, directory, pop, 2, cfg["load_seconds"],
                                                              seed, writer=True)
    finally:
        engine.close()
    notes.append("processes: worker processes run one thread each (FAISS and BLAS pinned to 1); the result cache "
                 "is off, so every request runs recall and ordering; figures from a loaded machine are noisy")
    tp = res["recommend_throughput"]
    res["summary"] = (
        f"processes: empty tail check p50 {res['empty_tail_check_us']['p50_us']:.1f}/p99 "
        f"{res['empty_tail_check_us']['p99_us']:.1f} us (data_version p50 {res['data_version_us']['p50_us']:.1f} us, "
        f"max(seq) query p50 {res['head_query_us']['p50_us']:.1f} us); "
        f"visibility p50 {res['visibility_ms']['p50_ms']:.1f}/p95 {res['visibility_ms']['p95_ms']:.1f} ms; "
        "recommend req/s with " + "/".join(str(r["processes"]) for r in tp) + " processes: "
        + "/".join(f"{r['requests_per_s']:.0f}" for r in tp)
        + f" (2 + a writer: {res['recommend_throughput_with_writer']['requests_per_s']:.0f})"
    )
    return res


def _times(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _visibility(ctx: Any, engine: Any, directory: Path, pop: SyntheticUsers, samples: int,
                seed: int) -> dict[str, Any]:
    ready, results = ctx.Event(), ctx.Queue()
    watcher = ctx.Process(target=_watch, args=(str(directory), samples, ready, results), daemon=True)
    watcher.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("the watcher process did not start")
        rng = random.Random(seed + 1)
        starts, acks = [], []
        for i in range(samples):
            time.sleep(rng.uniform(0.01, 0.03))
            item = rng.choice(pop.item_ids)
            t0 = time.time()
            engine.record(Event(f"vis-{i:05d}", item, "click"))
            acks.append(time.time())
            starts.append(t0)
        out = results.get(timeout=300)
    finally:
        watcher.join(30)
        if watcher.is_alive():
            watcher.kill()
    seen = np.asarray(out["seen"])
    return {
        "visibility_ms": {**latency_summary(seen - np.asarray(starts)),
                          "what": "start of record() in this process -> end of the watcher process's first "
                                  "recommend() that reflects the event (the watcher asks back to back)"},
        "record_ms": latency_summary(np.asarray(acks) - np.asarray(starts)),
        "watcher_recommend_ms": latency_summary(out["recommend"]),
    }


def _watch(directory: str, samples: int, ready: Any, results: Any) -> None:
    from recsieve.engine.engine import Engine

    _one_thread()
    engine = Engine.open(directory, embedder=HashEmbedder())
    engine.recommend("warm-up", 10)
    ready.set()
    seen, lat = [], []
    for i in range(samples):
        user = f"vis-{i:05d}"
        while True:
            t = time.perf_counter()
            engine.recommend(user, 10)
            lat.append(time.perf_counter() - t)
            if engine.users.get(user) is not None:
                seen.append(time.time())
                break
    engine.close()
    results.put({"seen": seen, "recommend": lat[:: max(1, len(lat) // 5000)]})


def _throughput(ctx: Any, engine: Any, directory: Path, pop: SyntheticUsers, count: int, seconds: float,
                seed: int, writer: bool) -> dict[str, Any]:
    start, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_serve, args=(str(directory), pop.users, seconds, seed + k, ready, start, results),
                         daemon=True) for k in range(count)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        start.set()
        written = 0
        if writer:  # about 100 events/s from this process while the workers answer
            rng = random.Random(seed + 2)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                engine.record(Event(rng.choice(pop.users), rng.choice(pop.item_ids), "click"))
                written += 1
                time.sleep(0.01)
        outs = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    requests = sum(o["requests"] for o in outs)
    elapsed = max(o["seconds"] for o in outs)
    row = {"processes": count, "requests": requests, "seconds": elapsed, "requests_per_s": requests / elapsed,
           "latency": latency_summary([x for o in outs for x in o["latency"]])}
    if writer:
        row["events_written"] = written
        row["entries_applied_per_worker"] = [o["applied"] for o in outs]
    return row


def _one_thread() -> None:
    """Pin this worker process to one thread: FAISS's OpenMP and, where threadpoolctl is
    installed, the BLAS numpy uses."""
    import faiss

    faiss.omp_set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return
    threadpool_limits(1)


def _serve(directory: str, users: list[str], seconds: float, seed: int, ready: Any, start: Any,
           results: Any) -> None:
    from recsieve.engine.engine import Engine

    _one_thread()
    engine = Engine.open(directory, embedder=HashEmbedder())
    rng = random.Random(seed)
    for _ in range(20):
        engine.recommend(rng.choice(users), 10)
    ready.put(True)
    start.wait()
    applied0 = engine.stats()["applied_seq"]
    lat = []
    t0 = time.perf_counter()
    end = t0 + seconds
    while (t := time.perf_counter()) < end:
        engine.recommend(rng.choice(users), 10)
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    applied = engine.stats()["applied_seq"] - applied0
    engine.close()
    results.put({"requests": len(lat), "seconds": elapsed, "latency": lat[:: max(1, len(lat) // 5000)],
                 "applied": applied})
