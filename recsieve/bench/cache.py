"""The cache part of the ``engine`` section of ``recsieve bench``: cache-hit latency, the hit
ratio and throughput under a Zipf user load, and event -> refreshed cached list latency.

Each function takes an open engine (with the cache on and a near-line refresher) and the run's
:class:`~recsieve.bench.common.SyntheticUsers`; all use the engine's public API only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recsieve.bench.common import (
    ProgressBar,
    Stopwatch,
    SyntheticUsers,
    latency_summary,
    throughput,
)
from recsieve.types import Event

__all__ = ["cache_hit_stage", "event_to_refresh", "hit_ratio", "zipf_load"]


def hit_ratio(before: Mapping[str, int], after: Mapping[str, int]) -> float:
    """Hits / (hits + misses) between two ``engine.stats()["cache"]`` snapshots (0 without requests)."""
    hits = after["hits"] - before["hits"]
    return hits / max(1, hits + after["misses"] - before["misses"])


def cache_hit_stage(engine: Any, hot_users: Sequence[str], rng: random.Random, requests: int,
                    sw: Stopwatch, notes: list[str]) -> None:
    """Time ``requests`` cache hits (stage ``cache_hit``): each hot user asks twice first, so
    that the request is admitted and the timed ones are hits; a note says if some were not."""
    for u in hot_users:
        engine.recommend(u, 10)
        engine.recommend(u, 10)
    hits0 = engine.stats()["cache"]["hits"]
    for _ in range(requests):
        u = rng.choice(hot_users)
        sw.run("cache_hit", lambda u=u: engine.recommend(u, 10))
    hit_count = engine.stats()["cache"]["hits"] - hits0
    if hit_count != requests:
        notes.append(f"cache_hit stage: {hit_count} of {requests} timed requests were hits")


def zipf_load(engine: Any, pop: SyntheticUsers, count: int, load_seconds: float, seed: int,
              bar: ProgressBar) -> dict[str, Any]:
    """Hit ratio from cold, then throughput and hit ratio with 1/2/4/8 caller threads, under a
    Zipf (s=1.1) load over ``count`` new users where 2% of the operations are events."""
    zipf_users = [f"z{i:05d}" for i in range(count)]
    engine.record([ev for u in zipf_users for ev in pop.history(u, 4)])
    weights = 1.0 / np.arange(1, len(zipf_users) + 1) ** 1.1
    cum = np.cumsum(weights / weights.sum())
    item_ids = pop.item_ids

    def zipf_call(r: random.Random) -> None:
        u = zipf_users[min(int(np.searchsorted(cum, r.random())), len(zipf_users) - 1)]
        if r.random() < 0.02:
            engine.record(Event(u, r.choice(item_ids), "click"))
        else:
            engine.recommend(u, 10)

    c0 = engine.stats()["cache"]
    zr = random.Random(seed + 7)
    n_zipf = 10 * len(zipf_users) if count >= 1000 else 5 * len(zipf_users)
    for _ in range(n_zipf):
        zipf_call(zr)
    c1 = engine.stats()["cache"]
    engine.wait_refreshed(30)
    zipf: dict[str, Any] = {"users": len(zipf_users), "exponent": 1.1, "operations": n_zipf,
                            "event_fraction": 0.02, "hit_ratio_from_cold": hit_ratio(c0, c1), "throughput": []}
    for threads in (1, 2, 4, 8):
        bar.step(f"engine: zipf load, {threads} threads")
        s0 = engine.stats()["cache"]
        row = throughput(zipf_call, threads, load_seconds, seed)
        row["hit_ratio"] = hit_ratio(s0, engine.stats()["cache"])
        zipf["throughput"].append(row)
        engine.wait_refreshed(30)
    zipf["hit_ratio_steady"] = zipf["throughput"][0]["hit_ratio"]
    return zipf


def event_to_refresh(engine: Any, pop: SyntheticUsers, hot: Sequence[str]) -> dict[str, Any]:
    """For each ``hot`` user (made hot and cached first): seconds from ``record(event)`` until
    ``wait_refreshed()`` returns, and whether the next request is then a cache hit."""
    engine.wait_refreshed(30)
    refresh_lat, hits_after = [], 0
    for u in hot:  # make each one hot and cached (its third request is a hit)
        for _ in range(3):
            engine.recommend(u, 10)
    for u in hot:
        t = time.perf_counter()
        engine.record(Event(u, pop.rng.choice(pop.item_ids), "click"))
        done = engine.wait_refreshed(10)
        refresh_lat.append(time.perf_counter() - t)
        h0 = engine.stats()["cache"]["hits"]
        engine.recommend(u, 10)
        hits_after += engine.stats()["cache"]["hits"] - h0 if done else 0
    return {
        "latency": latency_summary(refresh_lat),
        "next_request_hit_ratio": hits_after / len(hot),
        "refresher_stats": engine.stats()["refresh"],
        "measured_as": "record(event) for a hot, cached user until wait_refreshed() returns; "
                       "then the same request is checked to be a cache hit",
    }

