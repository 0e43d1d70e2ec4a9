"""FAISS compaction off the write lock (issue 17, item 3): a rebuild runs on a copy while searches
and writes go on against the serving index; the writes made meanwhile reach the new index before
it is swapped in; a failed or cancelled rebuild leaves the old index serving; a kill -9 of an
engine mid-compaction loses nothing acknowledged.

Interleavings are made deterministic by holding the rebuild (the index's ``_build``) at a chosen
point until the test releases it: no sleeps, no timing assertions.
"""

from __future__ import annotations

import logging
import random
import shutil
import textwrap
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_config import WordHashEmbedder
from test_crash import run_and_kill
from test_index_properties import DIM, PROPERTY, check_against_model, op_st

from recsieve import Engine, EngineConfig, Item
from recsieve.filters import parse_filter
from recsieve.indexes.faiss_index import FaissIndex

WAIT = 120  # seconds: only a deadlock or a lost wake-up ever waits this long

KINDS = {
    "flat": lambda **kw: FaissIndex(DIM, "flat", **kw),
    # below exact_below HNSW answers exactly, so its answers can be compared with the model's
    "hnsw": lambda **kw: FaissIndex(DIM, "hnsw", hnsw_m=8, ef_construction=40, **kw),
    # nprobe == nlist scans every list: exact, and the rebuild trains a new IVF
    "ivf": lambda **kw: FaissIndex(DIM, "ivf", nlist=2, nprobe=2, train_min=8, **kw),
}


@pytest.fixture(autouse=True)
def one_openmp_thread():
    """One FAISS (OpenMP) thread in the test's thread: OpenMP threads spin at barriers, so on a
    busy shared machine two of them can turn a millisecond into minutes. Each thread has its own
    setting; the threads these tests start set theirs (:func:`in_thread`)."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


class Held:
    """Holds ``index``'s rebuilds: each one signals ``started`` and waits for ``go`` before
    (``where="before"``) or after (``"after"``) building the new index; ``calls`` counts them."""

    def __init__(self, index: FaissIndex, where: str = "before") -> None:
        self.started, self.go, self.calls = threading.Event(), threading.Event(), 0
        real = index._build

        def build(snap, cancel):
            self.calls += 1
            self.started.set()
            if where == "before":
                assert self.go.wait(WAIT)
            new = real(snap, cancel)
            if where == "after":
                assert self.go.wait(WAIT)
            return new

        index._build = build


def in_thread(fn) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``fn`` in a started thread; its exception, if any, lands in the returned list."""
    errors: list[BaseException] = []

    def run():
        faiss.omp_set_num_threads(1)
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Model:
    """The exact model: live id -> (vector, metadata); ``group`` is ``id % 3`` for ever."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[np.ndarray, dict]] = {}

    def upsert(self, index: FaissIndex, ids: list[int], rng: np.random.Generator, version: int) -> None:
        x = unit(rng, len(ids))
        meta = [{"group": i % 3, "version": version} for i in ids]
        index.upsert(np.array(ids, dtype=np.int64), x, meta)
        self.items.update({i: (x[j], meta[j]) for j, i in enumerate(ids)})

    def remove(self, index: FaissIndex, ids: list[int]) -> None:
        assert index.remove(ids) == len(set(ids) & set(self.items))
        for i in ids:
            self.items.pop(i, None)

    def exact(self, queries: np.ndarray, k: int, flt=None) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([i for i, (_, m) in self.items.items() if flt is None or flt.matches(m)], dtype=np.int64)
        scores = queries @ np.stack([self.items[i][0] for i in ids.tolist()]).T
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), ids[order]

    def check(self, index: FaissIndex, rng: np.random.Generator, exact: bool) -> None:
        """The index holds exactly the model's items; its answers are the model's (``exact``) or
        recall at least 0.9 of them, never a removed item, never one the filter refuses."""
        assert len(index) == len(self.items)
        assert all(i in index and index.metadata(i) == {k: float(v) for k, v in m.items()}
                   for i, (_, m) in self.items.items())
        q = unit(rng, 8)
        for flt in (None, parse_filter("group == 1")):
            k = len(self.items) + 2 if exact else 20
            scores, ids = index.search(q, k, filter=flt)
            want_s, want = self.exact(q, k, flt)
            n = want.shape[1]
            assert set(ids[ids >= 0].tolist()) <= set(self.items)
            if flt is not None:
                assert all(i % 3 == 1 for i in ids[ids >= 0].tolist())
            if exact:
                assert np.array_equal(ids[:, :n], want) and (ids[:, n:] == -1).all()
                assert np.allclose(scores[:, :n], want_s, atol=1e-5)
            else:
                hits = sum(len(set(g.tolist()) & set(w.tolist())) for g, w in zip(ids, want, strict=True))
                assert hits / want.size >= 0.9


# -- writes during a compaction: the exact model, step by step ---------------------------------


def with_compaction(index: FaissIndex, before, during, after, where: str):
    """The ops ``before``, then a compaction (``compact()`` in another thread) held at ``where``
    while the ops ``during`` run, then the ops ``after`` once it has swapped its index in."""
    yield from before
    assert index.wait_for_compaction(WAIT)  # one the ops before started
    held = Held(index, where)
    live, tombstones = len(index), index.positions - len(index)
    thread, errors = in_thread(index.compact)
    try:
        assert held.started.wait(WAIT)
        yield from during
        assert index.positions - len(index) >= tombstones  # still the old index, tombstones and all
    finally:  # also when an op failed: the compaction is not left waiting
        held.go.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not errors and not index.compacting
    # the new index: the live items of the snapshot, then each row upserted meanwhile appended
    # (fewer when an IVF reached train_min meanwhile and was trained after the swap)
    assert index.positions <= live + sum(len(arg) for kind, arg, _ in during if kind == "upsert")
    yield from after


@PROPERTY
@given(kind=st.sampled_from(sorted(KINDS)), where=st.sampled_from(["before", "after"]),
       before=st.lists(op_st, max_size=8), during=st.lists(op_st, max_size=8),
       after=st.lists(op_st, max_size=4))
def test_writes_during_a_compaction_match_the_exact_model(kind, where, before, during, after):
    """Every op is checked against the model as it runs (check_against_model): searches and
    writes while the rebuild is held, and after its swap — removed ids never come back, upserts
    made meanwhile are not lost."""
    index = KINDS[kind]()
    check_against_model(index, with_compaction(index, before, during, after, where))


# -- automatic compaction with real threads ------------------------------------------------------


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_background_compaction_with_concurrent_searches_and_writes(kind, monkeypatch):
    """Removing past ``compact_at`` starts a compaction in the background; readers in threads and
    a writer go on throughout (the writer's ops race the catch-up and the swap once released).
    The end state is the model's; answers are exact (IVF, every list probed) or recall >= 0.9 of
    exact search (HNSW searched as a graph), during the compaction and after it."""
    monkeypatch.setattr(FaissIndex, "_swap_at", 0)  # every catch-up pass runs, not only the first
    rng = np.random.default_rng(0)
    exact = kind == "ivf"
    index = (FaissIndex(DIM, "ivf", nlist=8, nprobe=8, train_min=100, exact_below=1) if exact
             else FaissIndex(DIM, "hnsw", hnsw_m=16, exact_below=1))
    model = Model()
    n = 2000
    model.upsert(index, list(range(n)), rng, 0)
    held = Held(index, "after")
    first_removed = rng.choice(n, 700, replace=False).tolist()  # never upserted again
    model.remove(index, first_removed)
    assert held.started.wait(WAIT) and index.compacting

    stop = threading.Event()
    flt = parse_filter("group == 1")

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        while not stop.is_set():
            q = unit(r, 3)
            _, ids = index.search(q, 10)
            _, fids = index.search(q, 10, filter=flt)
            assert not np.isin(ids, first_removed).any() and not np.isin(fids, first_removed).any()
            assert (ids >= 0).all() and all(i % 3 == 1 for i in fids.ravel().tolist())

    next_id, upserted = n, 0

    def writes(steps: int) -> None:
        nonlocal next_id, upserted
        for _ in range(steps):
            live = sorted(model.items)
            again = rng.choice(live, 5, replace=False).tolist()  # new vectors for live items
            fresh = list(range(next_id, next_id + 10))
            next_id += 10
            model.upsert(index, again + fresh, rng, int(rng.integers(1, 1000)))
            upserted += 15
            model.remove(index, rng.choice(sorted(model.items), 4, replace=False).tolist())

    readers = [in_thread(lambda s=s: reader(s)) for s in (1, 2)]
    try:
        writes(20)
        model.check(index, rng, exact)  # while held: the old index, with every write
        held.go.set()
        writes(20)  # racing the catch-up passes and the swap
        assert index.wait_for_compaction(WAIT)
    finally:  # no thread left searching when the interpreter exits
        stop.set()
        held.go.set()
        for thread, _ in readers:
            thread.join(WAIT)
    assert not [errs for _, errs in readers if errs], readers
    assert index.positions < n + upserted  # swapped: the first removals' tombstones are gone
    model.check(index, rng, exact)


# -- failures, close, save -------------------------------------------------------------------


def broken(index: FaissIndex, calls: list[int]):
    def build(snap, cancel):
        calls.append(len(snap.keep))
        raise MemoryError("no room for the new graph")

    index._build = build


def test_a_failed_rebuild_leaves_the_old_index_serving(caplog):
    rng = np.random.default_rng(1)
    index, model = FaissIndex(DIM, "hnsw", compact_at=0.25), Model()
    model.upsert(index, list(range(400)), rng, 0)
    real, calls = index._build, []
    broken(index, calls)
    with caplog.at_level(logging.ERROR, logger="recsieve"):
        model.remove(index, list(range(120)))  # 30% dead: a background compaction, which fails
        assert index.wait_for_compaction(WAIT)
    assert calls == [280]
    failed = [r for r in caplog.records if "rebuild" in r.getMessage() and r.exc_info]
    assert failed and "keeps serving" in failed[0].getMessage()
    assert index.positions == 400  # still the old index, tombstones and all
    model.check(index, rng, exact=True)

    model.remove(index, [200])  # still past compact_at, but no retry yet
    assert index.wait_for_compaction(WAIT) and calls == [280]
    with pytest.raises(MemoryError):
        index.compact()  # an explicit one raises to its caller
    assert calls == [280, 279] and index.positions == 400
    model.upsert(index, [7, 300], rng, 1)
    model.check(index, rng, exact=True)

    index._build = real
    model.remove(index, list(range(201, 301)))  # compact_at of the index written since: retried
    assert index.wait_for_compaction(WAIT)
    assert calls == [280, 279] and index.positions == len(model.items) == 180
    model.check(index, rng, exact=True)


def test_close_cancels_a_background_compaction_and_stops_new_ones():
    rng = np.random.default_rng(2)
    index, model = FaissIndex(DIM, "hnsw"), Model()
    model.upsert(index, list(range(300)), rng, 0)
    real, calls = index._build, []

    def build(snap, cancel):  # hold the rebuild until close() has asked it to stop
        calls.append(1)
        assert cancel.wait(WAIT)
        return real(snap, cancel)

    index._build = build
    model.remove(index, list(range(100)))
    assert index.compacting
    index.close()  # waits for the cancelled compaction to end
    assert not index.compacting and calls == [1]
    assert index.positions == 300
    model.check(index, rng, exact=True)
    model.remove(index, list(range(100, 200)))  # far past compact_at: nothing starts after close
    assert index.compact(wait=False) is False
    assert not index.compacting and calls == [1]
    index._build = real
    index.compact()  # an explicit compaction still runs, in this thread
    assert index.positions == len(model.items) == 100
    model.check(index, rng, exact=True)


def test_compact_without_waiting_starts_one_background_compaction():
    rng = np.random.default_rng(6)
    index, model = FaissIndex(DIM, "hnsw", compact_at=1.0), Model()
    model.upsert(index, list(range(300)), rng, 0)
    model.remove(index, list(range(0, 300, 2)))  # below compact_at=1.0: nothing automatic
    assert not index.compacting and index.positions == 300
    held = Held(index, "before")
    try:
        assert index.compact(wait=False) is True and index.compacting
        assert held.started.wait(WAIT)  # the background thread has reached its rebuild
        assert index.compact(wait=False) is False and held.calls == 1  # one at a time
        model.upsert(index, [1, 2, 999], rng, 1)
    finally:  # the compaction is never left waiting
        held.go.set()
    assert index.wait_for_compaction(WAIT)
    assert index.positions == 153 and held.calls == 1
    model.check(index, rng, exact=True)


def test_save_during_a_compaction_writes_the_serving_state(tmp_path):
    rng = np.random.default_rng(3)
    index, model = FaissIndex(DIM, "ivf", nlist=4, nprobe=4, train_min=50), Model()
    model.upsert(index, list(range(300)), rng, 0)
    held = Held(index, "after")  # the new index is built, not yet swapped in
    model.remove(index, list(range(0, 300, 3)))
    assert held.started.wait(WAIT)
    model.upsert(index, [1, 2, 500], rng, 1)
    index.save(tmp_path / "during")
    loaded = FaissIndex.load(tmp_path / "during")
    assert loaded.positions == index.positions == 303
    model.check(loaded, rng, exact=True)
    held.go.set()
    assert index.wait_for_compaction(WAIT)
    index.save(tmp_path / "after")
    loaded = FaissIndex.load(tmp_path / "after")
    assert loaded.positions == 203 and loaded.trained  # 200 live at the snapshot, 3 upserted since
    model.check(loaded, rng, exact=True)


def writers_rebuild_is_off_the_lock(index, model: Model, rng: np.random.Generator, first: int, then: int,
                                    done, exact: bool) -> tuple[list[int], bool]:
    """``first`` items, then a writer thread's upsert of ``then`` more makes a rebuild due in that
    thread; while the rebuild is held, this thread's upserts, removals and searches go on (they
    would wait for the writer if it held the lock); once released, the writer returns with it
    ``done()`` and the index is the model's. Returns what the search made while the rebuild was
    held found (the ids of 3 items upserted meanwhile) and whether the writer was still waiting
    for the rebuild then."""
    model.upsert(index, list(range(first)), rng, 0)
    held = Held(index, "before")
    writer, errors = in_thread(lambda: model.upsert(index, list(range(first, first + then)), rng, 0))
    assert held.started.wait(WAIT) and not done()
    other = np.random.default_rng(5)
    x = unit(other, 3)
    index.upsert([900, 901, 902], x, [{"group": 0, "version": 9}] * 3)  # not blocked by the rebuild
    assert index.remove([5, 6]) == 2
    found = index.search(x, 1)[1][:, 0].tolist()
    assert found == [900, 901, 902]
    writer_waiting = writer.is_alive()
    held.go.set()
    writer.join(WAIT)
    assert not writer.is_alive() and not errors and done()
    for j, i in enumerate([900, 901, 902]):
        model.items[i] = (x[j], {"group": 0, "version": 9})
    del model.items[5], model.items[6]
    model.check(index, rng, exact=exact)
    return found, writer_waiting


def test_ivf_training_runs_in_the_writers_thread_off_the_lock():
    """The write that brings an IVF to ``train_min`` trains it before returning, but other threads'
    searches and writes go on meanwhile."""
    index = FaissIndex(DIM, "ivf", nlist=4, nprobe=4, train_min=100)
    found, writer_waiting = writers_rebuild_is_off_the_lock(index, Model(), np.random.default_rng(4), 60, 100,
                                                            lambda: index.trained, exact=True)
    assert writer_waiting and found == [900, 901, 902]  # served while the writer's training was held
    assert index.trained and len(index) == 60 + 100 + 3 - 2


# -- kill -9 of an engine while it compacts --------------------------------------------------

POOL = 6000  # the child's removable items; it removes a third at start, then one per write (~300/s here)

CHILD = textwrap.dedent(
    """
    import os, sys, tempfile, threading
    sys.path.insert(0, {tests!r})
    from test_config import WordHashEmbedder
    from recsieve import Engine, Event, Item

    op, path, pool = sys.argv[1], sys.argv[2], {pool}
    tempfile.tempdir = path + "-tmp"  # what a kill leaves in temporary folders stays in the test's
    os.makedirs(tempfile.tempdir, exist_ok=True)
    eng = Engine.open(path, embedder=WordHashEmbedder(64))
    index = eng.index
    real, go, started = index._build, threading.Event(), threading.Event()

    def build(snap, cancel):  # the first compaction is held: writes pile up in its log
        started.set()
        go.wait()
        return real(snap, cancel)

    index._build = build
    eng.remove_items([f"pool-{{n:05d}}" for n in range(pool // 3)])  # FAISS: past compact_at, one starts
    index.compact(wait=False)  # LanceDB: asked for (FAISS: one runs already)
    assert started.wait(60) and index.compacting
    print("READY", flush=True)
    i = 0
    while True:
        if pool // 3 + i >= pool - 1 - i:
            print("EXHAUSTED", flush=True)
            threading.Event().wait()
        if op == "released" and i == {release_at}:
            go.set()  # the compaction catches up and swaps while the writes go on
        eng.upsert_items([Item(f"new-{{i}}", title=f"Brand new gadget number {{i}}", metadata={{"n": i}})])
        eng.remove_items([f"pool-{{pool // 3 + i:05d}}"])
        eng.record([Event(f"u{{i}}", f"pool-{{pool - 1 - i:05d}}", "click")])
        print("ACK", i, flush=True)
        i += 1
    """
)


def pool_engine(path: Path, config: EngineConfig, pool: int) -> Path:
    """A saved engine directory at ``path`` of ``config`` holding ``pool`` removable items."""
    eng = Engine.create(path, config, embedder=WordHashEmbedder(64))
    eng.upsert_items([Item(f"pool-{n:05d}", title=f"Removable filler item {n}") for n in range(pool)])
    eng.save()
    eng.close()
    return path


def kill_during_a_compaction(tmp_path: Path, pool_dir: Path, op: str, pool: int, release_at: int,
                             delay: float) -> tuple[list, list]:
    """Run the writer child (:data:`CHILD`) on a copy of ``pool_dir`` and kill -9 it after
    ``delay`` seconds: ``op`` ``held``, while its first compaction is held; ``released``, after
    it was released at loop ``release_at`` (the kill lands after its swap, or during its catch-up
    or a later compaction). Reopened, the engine holds every write the child acknowledged."""
    path = tmp_path / "eng"
    shutil.copytree(pool_dir, path)
    script = CHILD.format(tests=str(Path(__file__).parent), pool=pool, release_at=release_at)
    acked = run_and_kill(path, op, delay, script=script)
    assert acked, "the child acknowledged nothing before it was killed"
    eng = Engine.open(path, embedder=WordHashEmbedder(64))
    try:
        for i in acked:
            assert f"new-{i}" in eng.catalog and eng.catalog.row(f"new-{i}") in eng.index
            assert f"pool-{pool // 3 + i:05d}" not in eng.catalog
            assert eng.users.get(f"u{i}") is not None
        assert all(f"pool-{n:05d}" not in eng.catalog for n in range(pool // 3))
        live = eng.catalog.live_rows()
        assert len(eng.index) == len(live) and all(int(r) in eng.index for r in live)
        assert len(eng.recommend("someone", 5)) == 5
        index = eng.index
        missing = [i for i in acked if f"new-{i}" not in eng.catalog]
    finally:
        eng.close()
    assert not index.compacting
    return acked, missing


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    return pool_engine(tmp_path_factory.mktemp("compaction") / "base",
                       EngineConfig(index="hnsw", refresh_threads=0, cache="none"), POOL)


@pytest.mark.parametrize("op", ["held", "released"])
def test_kill_minus_nine_during_a_compaction_loses_nothing_acknowledged(tmp_path, pool_dir, op):
    """``held``: the kill lands while the compaction is in flight; ``released``: it lands after
    the compaction caught up and swapped, or during a later one."""
    acked, missing = kill_during_a_compaction(tmp_path, pool_dir, op, POOL, release_at=5,
                                              delay=random.Random(op).uniform(0.5, 2.0))
    assert acked and missing == []  # every acknowledged item is in the reopened engine
