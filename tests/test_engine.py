"""The engine end to end on the bundled demo catalog, with the real embedding model and real indexes."""

from __future__ import annotations

import shutil
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.catalog import read_items
from recsieve.errors import FilterSyntaxError, InvalidInputError, StoreError, UnknownItemError
from recsieve.filters import parse_filter

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))


@pytest.fixture(scope="session")
def demo_items():
    return read_items(DEMO)


@pytest.fixture(scope="session")
def built(tmp_path_factory, embedder, demo_items):
    """One saved engine directory per backend, embedded once; tests work on copies."""
    dirs = {}
    for backend, index in [("faiss", "hnsw"), ("lance", "flat")]:
        path = tmp_path_factory.mktemp("built") / backend
        eng = Engine.create(path, EngineConfig(backend=backend, index=index), embedder=embedder)
        eng.upsert_items(demo_items)
        eng.save()
        eng.close()
        dirs[backend] = path
    return dirs


def make_engine(path, embedder, demo_items, backend="faiss", **cfg):
    """A fresh copy of the built demo engine, opened with ``cfg`` overriding its settings."""
    shutil.copytree(built_dirs[backend], path)
    config = EngineConfig.load(path).replace(**cfg)
    (path / "recsieve.toml").write_text(config.to_toml())
    return Engine.open(path, embedder=embedder)


built_dirs: dict = {}


@pytest.fixture(autouse=True)
def _built_dirs(built):
    built_dirs.update(built)


@pytest.fixture(params=["faiss", "lance"], ids=["faiss-hnsw", "lance-flat"])
def engine(request, tmp_path, embedder, demo_items):
    eng = make_engine(tmp_path / "eng", embedder, demo_items, backend=request.param)
    yield eng
    eng.close()


def ids(recs):
    return [r.item_id for r in recs]


def category(engine, item_id):
    return engine.catalog.get(item_id).metadata["category"]


def test_cold_user_gets_a_list(engine):
    recs = engine.recommend("nobody", 10)
    assert len(recs) == 10 and len(set(ids(recs))) == 10
    assert [r.rank for r in recs] == list(range(1, 11))
    assert all(np.isfinite(r.score) for r in recs)


def test_click_changes_list_and_excludes_item(engine):
    before = ids(engine.recommend("u1", 10))
    clicked = ["out-001", "out-002", "out-003"]
    engine.record([Event("u1", i, "click") for i in clicked])
    after = engine.recommend("u1", 10)
    assert ids(after) != before
    assert not set(clicked) & set(ids(after))
    # the list now leans to what was clicked: outdoor items dominate (there are 8 categories)
    share = np.mean([category(engine, r.item_id) == "outdoor" for r in after])
    assert share >= 0.5
    assert any("because you clicked" in r.reason for r in after)


def test_instruction_moves_matching_items_up(engine):
    engine.record([Event("u2", i, "click") for i in ["out-001", "out-004"]])
    plain = engine.recommend("u2", 10)
    asked = engine.recommend("u2", 10, instruction="kitchen tools for cooking: a frying pan or a chef's knife")
    share = lambda recs: np.mean([category(engine, r.item_id) == "kitchen" for r in recs])  # noqa: E731
    assert share(asked) >= share(plain) + 0.3
    assert any("matches your request" in r.reason for r in asked)


@pytest.mark.parametrize("flt", ['category == "books"', "price < 20 and in_stock == true",
                                 {"category": ["toys", "garden"]}, "not (price < 100)"])
def test_filters_never_violated(engine, flt):
    engine.record([Event("u3", "boo-001", "purchase"), Event("u3", "toy-002", "click")])
    f = parse_filter(flt)
    for user, inst in [("u3", None), ("cold", None), ("u3", "something for the garden")]:
        recs = engine.recommend(user, 20, instruction=inst, filters=flt)
        assert recs, "a satisfiable filter must leave results"
        for r in recs:
            assert f.matches(engine.catalog.get(r.item_id).metadata), (r.item_id, flt)


def test_search_upsert_remove_reload(tmp_path, engine, embedder):
    new = Item("new-1", title="Solar-powered espresso grinder for campers", categories=("kitchen",),
               metadata={"price": 42.0, "category": "kitchen"})
    engine.upsert_items([new])
    assert engine.search(new.title, 3)[0][0] == "new-1"
    engine.save()
    directory = engine.directory
    engine.remove_items(["new-1"])
    assert "new-1" not in [i for i, _ in engine.search(new.title, 50)]
    assert "new-1" not in ids(engine.recommend("anyone", 50, instruction=new.title))
    engine.close()
    again = Engine.open(directory, embedder=embedder)  # removal is in the journal only: replayed
    try:
        assert "new-1" not in [i for i, _ in again.search(new.title, 50)]
        again.upsert_items([new])
        assert again.search(new.title, 1)[0][0] == "new-1"
    finally:
        again.close()


def test_reopen_restores_identical_lists(tmp_path, embedder, demo_items):
    eng = make_engine(tmp_path / "e", embedder, demo_items)
    eng.record([Event("a", "mus-003", "click", ts=1000.0), Event("a", "mus-007", "purchase", ts=2000.0),
                Event("b", "gar-001", "view", ts=1500.0)])
    eng.save()
    eng.record([Event("a", "boo-004", "click", ts=3000.0)])  # journal only, not in the snapshot
    lists = {u: eng.recommend(u, 10) for u in ["a", "b", "cold"]}
    eng.close()
    again = Engine.open(tmp_path / "e", embedder=embedder)
    try:
        for u, recs in lists.items():
            got = again.recommend(u, 10)
            assert ids(got) == ids(recs)
            assert np.allclose([r.score for r in got], [r.score for r in recs])
        assert again.users.get("a").version == 3
    finally:
        again.close()


def test_cache_hit_equals_miss_and_writes_invalidate(tmp_path, embedder, demo_items):
    eng = make_engine(tmp_path / "c", embedder, demo_items, refresh_threads=0)
    try:
        eng.record([Event("h", "ele-001", "click")])
        first = eng.recommend("h", 10)
        second = eng.recommend("h", 10)  # second miss: admitted to the cache
        third = eng.recommend("h", 10)  # hit
        assert first == second == third
        assert eng.stats()["cache"]["hits"] == 1
        eng.record([Event("h", "ele-002", "click")])
        after_event = eng.recommend("h", 10)
        assert "ele-002" not in ids(after_event)
        assert eng.stats()["cache"]["hits"] == 1  # the event made the old entry unreachable
        eng.recommend("h", 10)
        eng.upsert_items([Item("x-1", title="Noise-cancelling wireless headphones, premium", metadata={"category": "electronics"})])
        assert eng.stats()["cache"]["hits"] == 1
        assert "x-1" in ids(eng.recommend("h", 10, instruction="noise-cancelling wireless headphones"))
    finally:
        eng.close()


def test_nearline_refresh_makes_next_request_a_hit(tmp_path, embedder, demo_items):
    eng = make_engine(tmp_path / "n", embedder, demo_items, refresh_threads=1)
    try:
        eng.recommend("hot", 10)
        eng.recommend("hot", 10)  # hot now (admitted)
        eng.record([Event("hot", f"toy-{i:03d}", "click") for i in range(1, 8)])  # a burst: one job
        assert eng.wait_refreshed(30)
        hits = eng.stats()["cache"]["hits"]
        recs = eng.recommend("hot", 10)
        assert eng.stats()["cache"]["hits"] == hits + 1
        assert not {f"toy-{i:03d}" for i in range(1, 8)} & set(ids(recs))
        refresh = eng.stats()["refresh"]
        assert refresh["done"] == 1 and refresh["queue"] == 0
    finally:
        eng.close()


def test_bad_input_is_rejected_and_changes_nothing(engine):
    engine.record([Event("z", "boo-002", "click")])
    version, seq = engine.users.get("z").version, engine.journal.last_seq
    with pytest.raises(UnknownItemError, match="events\\[1\\].item_id"):
        engine.record([Event("z", "boo-003", "click"), Event("z", "no-such-item", "click")])
    with pytest.raises(InvalidInputError, match="ts"):
        engine.record([Event("z", "boo-003", "click", ts=4e12)])
    for bad_k in (0, -1, 10**9, 2.5, True):
        with pytest.raises(InvalidInputError, match="k"):
            engine.recommend("z", bad_k)
    with pytest.raises(FilterSyntaxError):
        engine.recommend("z", 5, filters="price <")
    with pytest.raises(InvalidInputError, match="instruction"):
        engine.recommend("z", 5, instruction="   ")
    with pytest.raises(InvalidInputError, match="instruction"):
        engine.recommend("z", 5, instruction="x" * 1_000_000)
    with pytest.raises(InvalidInputError, match="user_id"):
        engine.recommend("", 5)
    with pytest.raises(UnknownItemError):
        engine.remove_items(["boo-001", "nope"])
    with pytest.raises(InvalidInputError):
        engine.upsert_items([Item("ok-1", title="fine"), Item("ok-1", title="dup")])
    assert engine.users.get("z").version == version and engine.journal.last_seq == seq
    assert "boo-001" in engine.catalog and "ok-1" not in engine.catalog
    assert len(engine.recommend("z", 5)) == 5


def test_create_builds_from_scratch(tmp_path, embedder, demo_items):
    eng = Engine.create(tmp_path / "fresh", EngineConfig(index="flat"), embedder=embedder)
    try:
        report = eng.upsert_items(demo_items[:20])
        assert (report.added, report.embedded) == (20, 20)
        again = eng.upsert_items(demo_items[:25])  # unchanged texts are not re-embedded
        assert (again.added, again.unchanged, again.embedded) == (5, 20, 5)
        assert eng.search(demo_items[3].title, 1)[0][0] == demo_items[3].id
    finally:
        eng.close()


def test_create_refuses_non_empty_dir_and_open_refuses_missing(tmp_path, embedder):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Engine.create(tmp_path / "full", embedder=embedder)
    with pytest.raises(StoreError):
        Engine.open(tmp_path / "missing", embedder=embedder)


def test_concurrent_recommend_and_record(tmp_path, embedder, demo_items):
    eng = make_engine(tmp_path / "t", embedder, demo_items)
    errors: list[BaseException] = []
    stop = threading.Event()
    item_ids = [it.id for it in demo_items]

    def reader(n):
        try:
            while not stop.is_set():
                for u in range(5):
                    recs = eng.recommend(f"user{u}", 10, filters="price < 200" if n % 2 else None)
                    assert len(recs) == 10
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def writer():
        try:
            rng = np.random.default_rng(0)
            for _ in range(60):
                u = f"user{rng.integers(5)}"
                item = item_ids[rng.integers(len(item_ids))]
                eng.record([Event(u, item, "click")])
                recs = eng.recommend(u, 10)
                assert item not in ids(recs)  # read-your-writes
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    writer()
    stop.set()
    for t in threads:
        t.join(30)
    eng.close()
    assert not errors, errors[:3]
