"""LanceDB compaction off the write lock (issue 17, item 3): ``optimize`` and ANN index builds run on
a hard-linked copy of the table while searches and writes go on against the live one; the writes
made meanwhile reach the copy before it is swapped in; a failed or cancelled compaction leaves the
live table serving and its copy deleted; a kill -9 of an engine mid-compaction loses nothing
acknowledged.

Why a copy and not LanceDB's own conflict resolution: see
:func:`test_lance_refuses_a_compaction_of_a_table_written_meanwhile`. Interleavings are made
deterministic by holding the compaction's build (the index's ``_build``, as in test_compaction):
no sleeps, no timing assertions.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_compaction import (
    WAIT,
    Held,
    Model,
    in_thread,
    kill_during_a_compaction,
    pool_engine,
    unit,
    writers_rebuild_is_off_the_lock,
)
from test_index_properties import DIM, check_against_model, op_st

from recsieve import EngineConfig
from recsieve.bench.compaction import compaction_latency, format_compaction
from recsieve.filters import parse_filter
from recsieve.indexes.lance_index import LanceIndex
from recsieve.indexes.lance_table import replay
from recsieve.indexes.rebuild import LogEntry


@pytest.fixture(autouse=True)
def private_folders_here(tmp_path, monkeypatch) -> Path:
    """Private tables and their copies are made in this test's folder, so a leaked one is seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def folders(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir())


def ann_index(**kw) -> LanceIndex:
    """IVF-HNSW-SQ over two partitions, both probed, a wide beam: approximate (8-bit SQ, a graph),
    close to exact on a few hundred rows."""
    return LanceIndex(DIM, index_type="hnsw_sq", index_min_rows=256, num_partitions=2, nprobes=2,
                      hnsw_m=8, ef_construction=64, ef_search=100, **kw)


# -- the evidence: LanceDB refuses to compact a table written meanwhile -------------------------


def test_lance_refuses_a_compaction_of_a_table_written_meanwhile(tmp_path):
    """Two handles of one table: a compaction planned on one, a delete committed on the other
    before the compaction commits. LanceDB's conflict resolution refuses the compaction's
    ``Rewrite`` (a retryable conflict): compacting the live table under steady writes would fail
    again and again, so LanceIndex compacts a copy and replays the writes."""
    db = lancedb.connect(str(tmp_path / "db"))
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("vector", pa.list_(pa.float32(), 2))])
    table = db.create_table("t", schema=schema)
    for lo in range(0, 40, 10):  # four small fragments: candidates for compaction
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(20, dtype=np.float32)), 2)
        table.add(pa.table({"id": pa.array(range(lo, lo + 10), pa.int64()), "vector": vectors}, schema=schema))
    dataset = table.to_lance()
    from lance.optimize import Compaction

    plan = Compaction.plan(dataset, {"target_rows_per_fragment": 1000})
    assert plan.num_tasks() >= 1
    rewrites = [task.execute(dataset) for task in plan.tasks]
    lancedb.connect(str(tmp_path / "db")).open_table("t").delete("id = 3")  # the other writer
    with pytest.raises(Exception, match="(?i)conflict"):
        Compaction.commit(dataset, rewrites)
    table.checkout_latest()
    assert table.count_rows() == 39  # the delete stands


# -- writes during a compaction: the exact model, step by step ---------------------------------


def with_compaction(index: LanceIndex, before, during, after, where: str):
    """The ops ``before``, then a compaction (``compact()`` in another thread) held at ``where``
    while the ops ``during`` run, then the ops ``after`` once it has swapped its copy in."""
    yield from before
    assert index.wait_for_compaction(WAIT)
    held = Held(index, where)
    live = index.dataset_path
    thread, errors = in_thread(index.compact)
    try:
        assert held.started.wait(WAIT)
        yield from during
        assert index.dataset_path == live  # still the live table
    finally:  # also when an op failed: the compaction is not left waiting
        held.go.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not errors and not index.compacting
    assert index.dataset_path != live and not live.exists()  # swapped in; the old folder is gone
    yield from after


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["before", "after"]), before=st.lists(op_st, max_size=6),
       during=st.lists(op_st, max_size=8), after=st.lists(op_st, max_size=3))
def test_writes_during_a_compaction_match_the_exact_model(where, before, during, after):
    """LanceDB without an ANN index answers exactly: every op is checked against the model as it
    runs, while the compaction is held and after its swap — removed ids never come back, rows
    upserted meanwhile (new metadata columns included) are not lost."""
    index = LanceIndex(DIM, index_type="none")
    check_against_model(index, with_compaction(index, before, during, after, where))
    index.close()


def test_replay_coalesces_writes_into_the_outcome_of_applying_them_in_order():
    """One id upserted, removed, upserted again with a new field; one upserted then removed; one
    removed then upserted: one delete and one merge_insert give what the writes in order give."""
    index = LanceIndex(DIM, index_type="none")
    rng = np.random.default_rng(9)
    x = unit(rng, 6)
    index.upsert([1, 2, 3], x[:3], [{"a": 1}, {"a": 2}, {"a": 3}])
    copy = LanceIndex(DIM, index_type="none")
    copy.upsert([1, 2, 3], x[:3], [{"a": 1}, {"a": 2}, {"a": 3}])
    writes = [
        ([1, 4], x[3:5], [{"a": 10}, {"a": 4}]),
        ([1], None, None),
        ([2], None, None),
        ([1, 2], x[5:6].repeat(2, axis=0), [{"a": 11, "b": "new"}, {"b": "x"}]),
        ([4], None, None),
    ]
    entries = []
    for n, (ids, vectors, meta) in enumerate(writes):
        if vectors is None:
            index.remove(ids)
            entries.append(LogEntry(np.array(ids), None, None, None))
        else:
            index.upsert(ids, vectors, meta)
            entries.append(LogEntry(np.array(ids), vectors, meta, {"b": "string"} if n == 3 else {}))
    assert replay(copy._table, entries) == 2  # ids 1 and 2 written, 4 never reaches the copy
    got = copy._table.to_arrow().sort_by("id").to_pylist()
    want = index._table.to_arrow().sort_by("id").to_pylist()
    assert got == want and [r["id"] for r in got] == [1, 2, 3]
    assert got[0]["b"] == "new" and got[1]["a"] is None


# -- readers and writers go on; answers agree with exact search ----------------------------------


def test_background_compaction_with_concurrent_searches_and_writes():
    """An IVF-HNSW-SQ table compacts in the background (its index remapped, unindexed rows folded
    in) while reader threads search and the writer upserts and removes — while the compaction is
    held, and racing its catch-up and swap once released. Throughout and after: never a removed
    item, never one the filter refuses, and recall >= 0.9 of exact search (the model)."""
    rng = np.random.default_rng(0)
    index, model = ann_index(), Model()
    n = 300
    model.upsert(index, list(range(n)), rng, 0)
    assert index.indexed and not index.compacting  # built in the writer's thread, swapped in
    first_removed = rng.choice(n, 90, replace=False).tolist()  # never upserted again
    model.remove(index, first_removed)
    held = Held(index, "after")
    live = index.dataset_path
    assert index.compact(wait=False) and held.started.wait(WAIT)

    flt = parse_filter("group == 1")
    phases = (threading.Event(), threading.Event())  # compaction held; released

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        for phase in phases:
            assert phase.wait(WAIT)
            for _ in range(8):
                q = unit(r, 2)
                _, ids = index.search(q, 10)
                _, fids = index.search(q, 10, filter=flt)
                assert not np.isin(ids, first_removed).any() and not np.isin(fids, first_removed).any()
                assert (ids >= 0).all() and all(i % 3 == 1 for i in fids.ravel().tolist())

    next_id = n

    def writes(steps: int) -> set[int]:
        """Upserts and removals; returns the ids they touched."""
        nonlocal next_id
        touched: set[int] = set()
        for _ in range(steps):
            again = rng.choice(sorted(model.items), 3, replace=False).tolist()  # new vectors, live ids
            gone = rng.choice(sorted(model.items), 2, replace=False).tolist()
            model.upsert(index, again + list(range(next_id, next_id + 5)), rng, int(rng.integers(1, 1000)))
            model.remove(index, gone)
            touched.update(again + gone + list(range(next_id, next_id + 5)))
            next_id += 5
        return touched

    readers = [in_thread(lambda s=s: reader(s)) for s in (1, 2)]
    try:
        phases[0].set()
        touched = writes(4)  # while held: the live table has every write
        assert all((i in index) == (i in model.items) for i in touched)
        assert index.dataset_path == live and index.compacting
        held.go.set()
        phases[1].set()
        writes(4)  # racing the catch-up passes and the swap
        assert index.wait_for_compaction(WAIT)
    finally:  # no thread left waiting when the test ends
        for phase in phases:
            phase.set()
        held.go.set()
        for thread, _ in readers:
            thread.join(WAIT)
    assert not [errs for _, errs in readers if errs], readers
    assert index.dataset_path != live and index.indexed
    model.check(index, rng, exact=False)
    index.close()


def test_a_write_during_a_compaction_returns_before_it_ends():
    """With the compaction held before it builds, upserts and removals from this thread return
    (they would wait for ever if compaction held the write lock) and are visible at once."""
    rng = np.random.default_rng(1)
    index, model = LanceIndex(DIM, index_type="none"), Model()
    model.upsert(index, list(range(50)), rng, 0)
    held = Held(index, "before")
    try:
        assert index.compact(wait=False) and held.started.wait(WAIT)
        assert index.compact(wait=False) is False and held.calls == 1  # one at a time
        model.upsert(index, [7, 500], rng, 1)
        model.remove(index, [8, 9])
        assert index.compacting and not held.go.is_set()  # the writes came back first
        _, ids = index.search(model.items[500][0][None, :], 1)
        assert ids[0, 0] == 500
    finally:
        held.go.set()
    assert index.wait_for_compaction(WAIT) and held.calls == 1
    model.check(index, rng, exact=True)
    index.close()


def test_the_first_ann_index_is_built_in_the_writers_thread_off_the_lock():
    """The write that brings the table to ``index_min_rows`` returns with the ANN index built (on
    a copy), but other threads' searches and writes go on while it builds."""
    index = ann_index()
    found, writer_waiting = writers_rebuild_is_off_the_lock(index, Model(), np.random.default_rng(4), 100, 200,
                                                            lambda: index.indexed, exact=False)
    assert writer_waiting and found == [900, 901, 902]  # served while the writer's index build was held
    assert index.indexed and len(index) == 100 + 200 + 3 - 2
    index.close()


def test_many_small_writes_start_a_background_compaction():
    rng = np.random.default_rng(6)
    index, model = LanceIndex(DIM, index_type="none"), Model()
    held = Held(index, "before")
    try:
        for i in range(64):  # the 64th write starts one
            assert not index.compacting
            model.upsert(index, [i], rng, 0)
        assert held.started.wait(WAIT) and index.compacting
    finally:
        held.go.set()
    assert index.wait_for_compaction(WAIT) and held.calls == 1
    assert index.fragments == 1
    model.check(index, rng, exact=True)
    index.close()


# -- failures, close, save, a caller's database --------------------------------------------------


def test_a_failed_compaction_leaves_the_live_table_serving_and_no_copy(private_folders_here, caplog):
    rng = np.random.default_rng(2)
    index, model = LanceIndex(DIM, index_type="none"), Model()
    model.upsert(index, list(range(100)), rng, 0)
    live, calls = index.dataset_path, []

    def build(snap, cancel):
        calls.append(snap.count)
        raise MemoryError("no room for the copy")

    real, index._build = index._build, build
    with caplog.at_level(logging.ERROR, logger="recsieve"):
        assert index.compact(wait=False)
        assert index.wait_for_compaction(WAIT)
    failed = [r for r in caplog.records if "compaction" in r.getMessage() and r.exc_info]
    assert calls == [100] and failed and "keeps serving" in failed[0].getMessage()
    assert index.dataset_path == live and folders(private_folders_here) == [live.parent.name]
    with pytest.raises(MemoryError):
        index.compact()  # an explicit one raises to its caller
    assert folders(private_folders_here) == [live.parent.name]
    model.upsert(index, [7, 300], rng, 1)
    model.check(index, rng, exact=True)
    index._build = real
    index.compact()
    assert folders(private_folders_here) == [index.uri.name] and index.dataset_path != live
    model.check(index, rng, exact=True)
    index.close()


def test_a_compaction_that_cannot_start_leaves_the_write_done(caplog):
    """Copying the table fails (a full disk): the writes that would start a compaction (the 64th
    small one; the one reaching ``index_min_rows``) return done, the failure is logged, and the
    live table keeps serving; an explicit compaction raises."""
    rng = np.random.default_rng(10)

    def no_copy():
        raise OSError("no space left for the copy")

    for index, writes in ((LanceIndex(DIM, index_type="none"), [[i] for i in range(64)]),
                          (ann_index(), [list(range(300))])):
        model = Model()
        index._begin = no_copy
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="recsieve"):
            for ids in writes:
                model.upsert(index, ids, rng, 0)
        assert [r for r in caplog.records if "could not start" in r.getMessage() and r.exc_info]
        assert not index.compacting and not index.indexed
        model.check(index, rng, exact=True)  # no ANN index yet: exact
        with pytest.raises(OSError):
            index.compact()
        index.close()


def test_close_cancels_a_background_compaction(private_folders_here):
    rng = np.random.default_rng(3)
    index, model = LanceIndex(DIM, index_type="none"), Model()
    model.upsert(index, list(range(80)), rng, 0)
    real, live = index._build, index.dataset_path

    def build(snap, cancel):  # hold the build until close() has asked it to stop
        assert cancel.wait(WAIT)
        return real(snap, cancel)

    index._build = build
    assert index.compact(wait=False)
    index.close()  # waits for the cancelled compaction to end
    assert not index.compacting and index.dataset_path == live
    assert folders(private_folders_here) == [live.parent.name]  # the copy is gone
    assert index.compact(wait=False) is False  # nothing starts after close
    model.remove(index, [1, 2])
    model.check(index, rng, exact=True)


def test_save_during_a_compaction_writes_the_serving_table(tmp_path):
    rng = np.random.default_rng(7)
    index, model = LanceIndex(DIM, index_type="none"), Model()
    model.upsert(index, list(range(60)), rng, 0)
    held = Held(index, "after")  # the copy is optimized, not yet swapped in
    assert index.compact(wait=False) and held.started.wait(WAIT)
    model.upsert(index, [1, 2, 500], rng, 1)
    model.remove(index, [3])
    index.save(tmp_path / "during")
    model.check(LanceIndex.load(tmp_path / "during"), rng, exact=True)
    held.go.set()
    assert index.wait_for_compaction(WAIT)
    index.save(tmp_path / "after")
    model.check(LanceIndex.load(tmp_path / "after"), rng, exact=True)
    index.close()


def test_a_table_in_a_callers_database_compacts_in_place(tmp_path):
    rng = np.random.default_rng(8)
    index, model = LanceIndex(DIM, index_type="none", uri=tmp_path / "db"), Model()
    for i in range(5):
        model.upsert(index, [i], rng, 0)
    assert index.compact(wait=False) is False and not index.compacting
    assert index.compact() is True
    assert index.dataset_path == tmp_path / "db" / "items.lance"
    assert index.fragments == 1
    model.check(index, rng, exact=True)


# -- kill -9 of an engine while it compacts --------------------------------------------------

POOL = 3000  # the child's removable items


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    return pool_engine(tmp_path_factory.mktemp("lance-compaction") / "base",
                       EngineConfig(backend="lance", index="flat", refresh_threads=0, cache="none"), POOL)


@pytest.mark.parametrize("op", ["held", pytest.param("released", marks=pytest.mark.slow)])  # slow: suite time
def test_kill_minus_nine_during_a_compaction_loses_nothing_acknowledged(tmp_path, pool_dir, op):
    """The child of test_compaction on a LanceDB engine: ``held``, the kill lands while the
    compaction of a copy is in flight; ``released`` (after one loop), after the copy caught up and
    was swapped in, or during its catch-up. Each loop is three journaled writes: on the loaded
    reference machine the child acknowledged 2-8 loops before a kill after 2.5-5 s."""
    acked, missing = kill_during_a_compaction(tmp_path, pool_dir, op, POOL, release_at=1,
                                              delay=random.Random(op).uniform(2.5, 5.0))
    assert acked and missing == []  # every acknowledged item is in the reopened engine


# -- the bench's compaction section on LanceDB ----------------------------------------------------


def test_compaction_latency_on_a_lance_engine(tmp_path):
    tmp_path = tmp_path / "bench"  # beside the private tables' folder
    tmp_path.mkdir()
    res = compaction_latency(300, 0, tmp_path, users=10, events=3, requests=5, index="flat", backend="lance")
    assert res["backend"] == "lance" and res["removed_before"] == 30
    assert res["fragments_after"] == 2 and "positions_before" not in res  # compacted, then the write during it
    assert res["recommend_before"]["n"] == res["recommend_after"]["n"] == 5 and res["compaction_s"] > 0
    assert res["write_during_ms"] > 0 and isinstance(res["write_returned_while_compacting"], bool)
    assert "lance flat" in format_compaction(res)
    assert not list(tmp_path.iterdir())  # the engine directory is removed


def test_searches_go_on_while_a_callers_table_compacts_in_place(tmp_path):
    """A table in a caller's database compacts in place; a search started while LanceDB's
    ``optimize`` runs is answered before it ends (only writes wait for it), and after it the
    table has one fragment and every row."""
    import threading

    rng = np.random.default_rng(9)
    index, model = LanceIndex(DIM, index_type="none", uri=tmp_path / "db"), Model()
    for i in range(5):
        model.upsert(index, [i], rng, 0)
    started, searched, answers = threading.Event(), threading.Event(), []
    real = index._table.optimize

    def held_optimize(*args, **kwargs):
        started.set()
        assert searched.wait(WAIT), "the search did not run while the compaction was held"
        return real(*args, **kwargs)

    index._table.optimize = held_optimize
    thread, errors = in_thread(index.compact)
    assert started.wait(WAIT)
    answers.append(index.search(np.ones((1, DIM), np.float32) / DIM**0.5, 5)[1])
    searched.set()
    thread.join(WAIT)
    assert not thread.is_alive() and not errors
    assert sorted(answers[0][0].tolist()) == [0, 1, 2, 3, 4]
    del index._table.optimize
    assert index.fragments == 1
    model.check(index, rng, exact=True)
