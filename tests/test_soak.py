"""Concurrency soak: 8 threads recommend while 2 threads record events and upsert/remove items.

Checked for the whole run: no exception, no deadlock (every thread ends within a timeout),
read-your-writes for every writing user (the next recommend excludes the item just recorded
and the user's version counts every event), filters are never violated, and an item removed
before a request started never appears in its answer. Afterwards the directory reopens with
exactly the acknowledged state. A short run is in the default suite; a long one is ``slow``.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.catalog import read_items
from recsieve.filters import parse_filter

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))
READERS, WRITERS = 8, 2
FILTERS = [None, "price < 50", 'category == "kitchen"', "in_stock == true and price < 200",
           {"category": ["kitchen", "garden"]}, "not (price < 20)"]
INSTRUCTIONS = [None, None, "a grinder or kettle for the kitchen", "tools for the garden", "something for a rainy hike"]
NEW_TITLES = ["Solar-powered espresso grinder", "Copper kettle with whistle", "Cast iron garden trowel",
              "Ceramic herb planter set", "Hand-forged chef's knife", "Bamboo cutting board", "Rain-proof garden gloves"]


@pytest.fixture(scope="module")
def demo_items():
    return read_items(DEMO)


@pytest.fixture(scope="module")
def build(tmp_path_factory, embedder, demo_items):
    """``build(backend)``: a saved demo engine directory, embedded once per backend."""
    built: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in built:
            path = tmp_path_factory.mktemp("soak") / backend
            config = EngineConfig(backend=backend, index="hnsw" if backend == "faiss" else "flat")
            with Engine.create(path, config, embedder=embedder) as eng:
                eng.upsert_items(demo_items)
                eng.save()
            built[backend] = path
        return built[backend]

    return get


def check_soak(path: Path, embedder, demo_items, seconds: float) -> None:
    eng = Engine.open(path, embedder=embedder)
    meta_of = {it.id: dict(it.metadata) for it in demo_items}  # every item ever upserted
    # each writer owns 12 demo items it removes over time; events only touch items never removed
    reserved = {0: [f"kit-{n:03d}" for n in range(14, 26)], 1: [f"gar-{n:03d}" for n in range(14, 26)]}
    stable = sorted(set(meta_of) - {i for ids in reserved.values() for i in ids})
    removed: list[str] = []  # appended only after remove_items returned
    expected_versions: dict[str, int] = {}
    errors: list[BaseException] = []
    calls = Counter()
    stop = threading.Event()
    writer_users = [f"w{j}-{n}" for j in range(WRITERS) for n in range(5)]
    users = writer_users + [f"r{n}" for n in range(10)]

    def check_answer(recs, flt, gone_before: list[str]) -> None:
        got = [r.item_id for r in recs]
        assert len(got) == len(set(got)) <= 10
        assert not set(got) & set(gone_before), set(got) & set(gone_before)
        f = parse_filter(flt)
        for item_id in got:
            assert f is None or f.matches(meta_of[item_id]), (item_id, flt)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                gone = removed[: len(removed)]
                flt, inst = rng.choice(FILTERS), rng.choice(INSTRUCTIONS)
                check_answer(eng.recommend(rng.choice(users), 10, instruction=inst, filters=flt), flt, gone)
                calls["read"] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def writer(j: int) -> None:
        rng = random.Random(100 + j)
        live_new: list[str] = []
        try:
            i = 0
            while not stop.is_set():
                user = f"w{j}-{i % 5}"
                item = rng.choice(stable)
                eng.record([Event(user, item, rng.choice(["click", "view", "purchase"]))])
                expected_versions[user] = expected_versions.get(user, 0) + 1
                gone = removed[: len(removed)]
                flt, inst = rng.choice(FILTERS), rng.choice(INSTRUCTIONS)
                recs = eng.recommend(user, 10, instruction=inst, filters=flt)
                assert item not in [r.item_id for r in recs]  # read-your-writes
                assert eng.users.get(user).version == expected_versions[user]
                check_answer(recs, flt, gone)
                if i % 3 == 0:
                    new_id = f"soak-{j}-{i}"
                    title = f"{NEW_TITLES[i % len(NEW_TITLES)]}, batch {j}-{i}"
                    meta = {"price": float(rng.randint(5, 150)), "category": rng.choice(["kitchen", "garden"]),
                            "in_stock": rng.random() < 0.5}
                    meta_of[new_id] = meta
                    eng.upsert_items([Item(new_id, title=title, categories=(meta["category"],), metadata=meta)])
                    assert new_id in [h for h, _ in eng.search(title, 10)]  # recallable at once
                    live_new.append(new_id)
                elif i % 3 == 1 and len(live_new) > 2:
                    victim = live_new.pop(0)
                    eng.remove_items([victim])
                    removed.append(victim)
                elif i % 3 == 2 and reserved[j]:
                    victim = reserved[j].pop()
                    eng.remove_items([victim])
                    removed.append(victim)
                calls["write"] += 1
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(READERS)]
    threads += [threading.Thread(target=writer, args=(j,), daemon=True) for j in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(60)
        assert not [t.name for t in threads if t.is_alive()], "deadlock: threads still running"
        assert not errors, errors[:3]
        assert calls["read"] >= READERS and calls["write"] >= 3, calls
        assert removed
        assert eng.wait_refreshed(30)
        for u in users:  # after the writes settle, cached and refreshed answers are still clean
            check_answer(eng.recommend(u, 10), None, removed)
        live = sorted(it.id for it in eng.catalog)
    finally:
        stop.set()
        eng.close()
    with Engine.open(path, embedder=embedder) as again:  # nothing acknowledged was lost
        assert sorted(it.id for it in again.catalog) == live
        assert not set(removed) & set(live)
        for u, v in expected_versions.items():
            assert again.users.get(u).version == v


def test_soak_short(build, tmp_path, embedder, demo_items):
    path = tmp_path / "eng"
    shutil.copytree(build("faiss"), path)
    check_soak(path, embedder, demo_items, seconds=6)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "seconds"), [("faiss", 60), ("lance", 40)])
def test_soak_long(build, tmp_path, embedder, demo_items, backend, seconds):
    path = tmp_path / "eng"
    shutil.copytree(build(backend), path)
    check_soak(path, embedder, demo_items, seconds=seconds)


def test_nearline_refresh_never_caches_an_item_removed_meanwhile(build, tmp_path, embedder):
    """A removal that lands while a near-line refresh computes must not be cached as current.

    The worst moment is forced: the refresh's computation removes its own top item right
    after computing (as a concurrent writer could).
    """
    path = tmp_path / "eng"
    shutil.copytree(build("faiss"), path)
    eng = Engine.open(path, embedder=embedder, config=EngineConfig(index="hnsw", refresh_threads=1))
    try:
        eng.recommend("hot", 10)
        eng.recommend("hot", 10)  # hot now
        compute, victims = eng._compute, []

        def compute_then_remove(*args, **kwargs):
            recs = compute(*args, **kwargs)
            if threading.current_thread() is not threading.main_thread() and recs and not victims:
                victims.append(recs[0].item_id)
                eng.remove_items(victims)
            return recs

        eng._compute = compute_then_remove
        eng.record([Event("hot", "toy-001", "click")])
        assert eng.wait_refreshed(30) and victims
        assert victims[0] not in eng.catalog
        assert victims[0] not in [r.item_id for r in eng.recommend("hot", 10)]
    finally:
        eng.close()
