"""The journal on Redis Streams (``recsieve/engine/journal_redis.py``): sequences assigned by one
script, the write lock and its fencing, compaction, history, durability checks, and an engine
directory whose journal is a stream. Against a real ``redis-server`` started here (skipped, saying
why, only where it cannot run). The protocol tests shared with the SQLite journal are
parametrised in ``test_journal_users.py`` and ``test_processes.py`` (they import the fixtures).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_config import WordHashEmbedder

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.engine.journal import EventRecord, ItemOp, JournalMoved, JournalTruncated
from recsieve.engine.journal_redis import RedisJournal, parse_journal_url
from recsieve.errors import InvalidInputError, StoreError

DIM = 4


@contextmanager
def redis_server(folder: Path, *, durable: bool = True) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port, its files in ``folder``; yields ``redis://HOST:PORT/0``.
    ``durable``: append-only file synced before every answer (what a journal needs)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the Redis journal is not tested")
    redis = pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    aof = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder), *aof],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.skip("redis-server did not start here")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_base(tmp_path_factory) -> Iterator[str]:
    """One durable Redis for the module."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_journal_url(redis_base: str) -> str:
    """A journal URL naming a stream no other test uses."""
    return f"{redis_base}?stream=t{uuid.uuid4().hex[:12]}"


def event(user: str, item: str = "a", row: int = 0, text: str | None = None) -> EventRecord:
    return EventRecord(0, user, item, row, "click", 10.0, None, text)


def test_url_parsing_and_bad_urls():
    assert parse_journal_url("redis://h:1/2?stream=s") == ("redis://h:1/2", "s", True)
    assert parse_journal_url("redis://h:1/0?require_fsync=false&stream=x&socket_timeout=3") == \
        ("redis://h:1/0?socket_timeout=3", "x", False)
    for bad in ("http://h:1/0", "redis://h:1/0?stream=a:b", "redis://h:1/0?require_fsync=maybe", 7):
        with pytest.raises(InvalidInputError, match="^journal="):
            parse_journal_url(bad)
    with pytest.raises(InvalidInputError, match="^journal="):
        EngineConfig(journal="postgres://h/db")


def test_sequences_tail_history_and_compaction(redis_journal_url):
    one, two = RedisJournal(redis_journal_url, DIM), RedisJournal(redis_journal_url, DIM)
    try:
        vecs = np.eye(DIM, dtype=np.float32)[:2]
        assert one.append([ItemOp(0, "upsert", [{"id": "a"}, {"id": "b"}], vecs)]) == 1
        assert two.append([event("u", text="e1"), event("v", "b", 1, "e2")]) == 3
        version = one.version()
        assert one.append([ItemOp(0, "remove", ["a"], None)]) == 4
        assert two.version() != version  # another process's commit is seen
        entries = list(two.tail(0))
        assert [e.seq for e in entries] == [1, 2, 3, 4]
        assert isinstance(entries[0], ItemOp) and np.array_equal(entries[0].vectors, vecs)
        assert entries[1] == EventRecord(2, "u", "a", 0, "click", 10.0, None, "e1")
        assert [e.seq for e in one.tail(2)] == [3, 4]
        assert [e.text for e in one.events("v")] == ["e2"] and one.events("v", upto=2) == []
        assert [e.seq for e in one.events()] == [2, 3]
        cols = list(one.event_columns(0, 4))
        assert cols[0].users == ["u", "v"] and cols[0].seq.tolist() == [2, 3]
        one.truncate_item_ops(4)
        assert (two.head(), two.floor()) == (4, 4)
        with pytest.raises(JournalTruncated):
            list(two.tail(1))
        assert list(two.tail(4)) == []
        assert [e.text for e in two.events()] == ["e1", "e2"]  # events are history: kept
        assert one.append([event("u")]) == 5  # never goes back
    finally:
        one.close()
        two.close()


def test_a_section_writes_whole_or_not_at_all(redis_journal_url):
    journal = RedisJournal(redis_journal_url, DIM)
    try:
        with pytest.raises(RuntimeError):
            with journal.writing():
                journal.append([event("u")], after=0)
                raise RuntimeError("the caller's check failed after the append")
        assert journal.head() == 0 and list(journal.tail(0)) == []
        with journal.writing():
            assert journal.append([event("u")], after=0) == 1
            assert journal.append([event("u"), event("w")], after=1) == 3
            with pytest.raises(JournalMoved):
                journal.append([event("u")], after=1)
        assert [e.seq for e in journal.tail(0)] == [1, 2, 3]
    finally:
        journal.close()


def test_the_write_lock_says_busy_and_fences_an_expired_holder(redis_journal_url):
    import redis

    slow = RedisJournal(redis_journal_url, DIM, busy_timeout_s=0.3)
    other = RedisJournal(redis_journal_url, DIM, busy_timeout_s=5)
    client = redis.Redis.from_url(parse_journal_url(redis_journal_url)[0])
    lock_key = "{" + slow.stream + "}:lock"
    try:
        client.set(lock_key, "someone-else")
        with pytest.raises(StoreError, match="busy: another process held the journal's write lock for more than 0.3 s"):
            slow.append([event("u")])
        client.delete(lock_key)
        assert slow.append([event("u")]) == 1
        # A holder paused past the lock's life: another writer appends meanwhile; the paused
        # holder's section then writes nothing.
        with pytest.raises(StoreError, match="write lock expired"):
            with slow.writing():
                slow.append([event("late")], after=1)
                client.delete(lock_key)  # as if its TTL ran out
                assert other.append([event("other")]) == 2
        assert [e.user_id for e in other.tail(0)] == ["u", "other"]
    finally:
        client.close()
        slow.close()
        other.close()


def test_writers_in_threads_get_distinct_consecutive_sequences(redis_journal_url):
    journals = [RedisJournal(redis_journal_url, DIM) for _ in range(3)]
    got: list[int] = []

    def write(j: RedisJournal, n: int) -> None:
        for i in range(20):
            got.append(j.append([event(f"u{n}", text=f"{n}-{i}")]))

    threads = [threading.Thread(target=write, args=(j, n)) for n, j in enumerate(journals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(got) == list(range(1, 61))
        assert [e.seq for e in journals[0].tail(0)] == list(range(1, 61))
    finally:
        for j in journals:
            j.close()


def test_redis_not_set_up_for_durable_writes_is_refused(tmp_path, caplog):
    with redis_server(tmp_path / "r", durable=False) as url:
        with pytest.raises(StoreError, match="appendonly=no.*appendfsync always"):
            RedisJournal(f"{url}?stream=s", DIM)
        journal = RedisJournal(f"{url}?stream=s&require_fsync=false", DIM)  # the risk accepted: a warning
        journal.close()
        assert "not set up for durable acknowledgements" in caplog.text


def test_wrong_dimension_and_unreachable_server(redis_journal_url):
    RedisJournal(redis_journal_url, DIM).close()
    with pytest.raises(StoreError, match="dimension 4, this engine 8"):
        RedisJournal(redis_journal_url, 8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(StoreError, match=rf"journal redis://127.0.0.1:{port}/0\?stream=x: connect failed"):
        RedisJournal(f"redis://127.0.0.1:{port}/0?stream=x", DIM)


def test_an_engine_directory_journaled_on_redis(tmp_path, redis_journal_url):
    config = EngineConfig(index="flat", recall_n=20, refresh_threads=0, journal=redis_journal_url)
    path = tmp_path / "eng"
    eng = Engine.create(path, config, embedder=WordHashEmbedder())
    try:
        eng.upsert_items([Item("a", title="red kettle"), Item("b", title="blue teapot"), Item("c", title="green lamp")])
        eng.record([Event("u", "a", "click"), Event("u", "b", "view")])
        other = Engine.open(path, embedder=WordHashEmbedder())
        try:
            other.remove_items(["c"])
            other.record(Event("u", "c" if "c" in other.catalog else "a", "click"))
            assert "c" not in eng.search("green lamp", 3)[0][0]  # the other process's removal, applied here
            assert eng.users.get("u").version == 3
        finally:
            other.close()
    finally:
        eng.close()
    assert not (path / "journal.sqlite").exists()
    with Engine.open(path, embedder=WordHashEmbedder()) as again:  # nothing saved since create: all replayed
        assert sorted(it.id for it in again.catalog) == ["a", "b"]
        assert again.users.get("u").version == 3
        assert [e.kind for e in again.journal.events("u")] == ["click", "view", "click"]


@pytest.fixture(params=["sqlite", "redis"])
def journal_url(request) -> str:
    """For tests run on both journals: ``""`` (``journal.sqlite`` in the directory) or a Redis stream
    no other test uses (an engine config's ``journal``)."""
    return "" if request.param == "sqlite" else request.getfixturevalue("redis_journal_url")


@pytest.fixture
def open_journal(journal_url, tmp_path):
    """``open_journal(dim)``: a journal on one storage for the test, SQLite or Redis, opened anew each call."""
    from recsieve.engine.journal import Journal

    def make(dim: int):
        return RedisJournal(journal_url, dim) if journal_url else Journal(tmp_path / "j.sqlite", dim)

    return make
