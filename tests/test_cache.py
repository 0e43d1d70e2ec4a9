"""Result caches: one contract for the in-process LRU and Redis; admission, bounds, TTL; score cache."""

import json
import os
import subprocess
import sys
import time

import pytest
from test_journal_redis import redis_server

from recsieve.engine.cache import MemoryCache, RedisCache, ScoreCache, decode, encode, result_key
from recsieve.types import Recommendation


def recs(tag, n=3):
    return [Recommendation(f"{tag}-{i}", 1.0 - i / 10, 0.5, i + 1, f"because {tag}") for i in range(n)]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis"), durable=False) as url:  # a cache needs no fsync
        yield url


@pytest.fixture(params=["memory", "redis"])
def make_cache(request):
    def make(**kw):
        if request.param == "memory":
            return MemoryCache(**kw)
        url = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(url).flushall()
        kw.pop("max_entries", None)
        return RedisCache(url, **kw)

    return make


def test_hit_returns_exactly_what_was_stored(make_cache):
    cache = make_cache(admit_on_first=True)
    key = result_key("u", 3, 7, "m1", 10, None, None)
    assert cache.get(key) is None
    assert cache.put(key, recs("a"))
    assert cache.get(key) == recs("a")
    stats = cache.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1


def test_admission_needs_a_second_request(make_cache):
    cache = make_cache()
    key = result_key("one-time", 0, 0, "", 10, None, None)
    assert cache.get(key) is None
    assert cache.put(key, recs("x")) is False  # requested once: not admitted
    assert cache.get(key) is None
    assert cache.put(key, recs("x")) is True  # requested again: admitted
    assert cache.get(key) == recs("x")
    other = result_key("other", 0, 0, "", 10, None, None)
    assert cache.put(other, recs("y"), force=True)  # near-line refresh bypasses admission
    assert cache.get(other) == recs("y")


def test_ttl_expiry(make_cache):
    cache = make_cache(ttl_s=0.2, admit_on_first=True)
    key = result_key("u", 1, 1, "", 5, "hi", None)
    cache.put(key, recs("t"))
    assert cache.get(key) == recs("t")
    time.sleep(0.35)
    assert cache.get(key) is None


def test_key_covers_every_input():
    base = ("u", 1, 2, "m", 10, "cheap", "price < 3")
    keys = {result_key(*base)}
    for i, changed in enumerate(["v", 2, 3, "n", 11, "pricey", "price < 4"]):
        args = list(base)
        args[i] = changed
        keys.add(result_key(*args))
    assert len(keys) == 8


#: Requests whose keys must agree across processes: strings (salted by ``hash``), None, unicode.
KEY_CASES = [
    ["u", 1, 2, "m", 10, "cheap", "price < 3"],
    ["u", 1, 2, "m", 10, None, None],
    ["user-42", 0, 0, "", 5, "quelque chose de léger, moins de 30 €", 'category in ("books", "music")'],
    ["u1", 12, 2, "m", 10, None, None],
    ["u11", 2, 2, "m", 10, None, None],
    ["u", 1, 2, "m", 10, "", None],
    ["u", 1, 2, "m", 10, None, ""],
]
KEY_CHILD = (
    "import json, sys\n"
    "from recsieve.engine.cache import result_key\n"
    "print(json.dumps([result_key(*case) for case in json.loads(sys.argv[1])]))\n"
)


def test_keys_are_the_same_in_every_process():
    """Web workers share a Redis cache: two processes must compute the same key for the same
    request, whatever their hash randomisation (``PYTHONHASHSEED``) is."""
    runs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", KEY_CHILD, json.dumps(KEY_CASES)], env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        runs.append(json.loads(out.stdout))
    here = [result_key(*case) for case in KEY_CASES]
    assert runs[0] == runs[1] == runs[2] == here
    assert len(set(here)) == len(KEY_CASES)  # different requests, different keys


def test_memory_lru_bound_and_scan_resistance():
    cache = MemoryCache(max_entries=3)
    hot = ["h1", "h2", "h3"]
    for k in hot:
        for _ in range(2):
            cache.get(k)
            cache.put(k, recs(k))
    for i in range(1000):  # a scan of one-time users
        cache.get(f"scan{i}")
        cache.put(f"scan{i}", recs("s"))
    assert all(cache.get(k) == recs(k) for k in hot)
    for k in ["n1", "n2"]:
        cache.get(k)
        cache.get(k)
        cache.put(k, recs(k))
    assert len(cache) == 3
    assert cache.get("h1") is None  # least recently used went first
    assert cache.stats()["evictions"] == 2


def test_memory_byte_bound():
    cache = MemoryCache(max_entries=1000, max_bytes=2000, admit_on_first=True)
    for i in range(50):
        cache.put(f"k{i}", recs("b", n=2))
    assert cache.stats()["bytes"] <= 2000
    assert 0 < len(cache) < 50


def test_encode_round_trip():
    assert decode(encode(recs("z"))) == recs("z")


def test_score_cache_keys_on_context_and_item_version():
    sc = ScoreCache(max_entries=4)
    ctx = ScoreCache.context_key("recent: clicked X")
    sc.store(ctx, [(1, "h1"), (2, "h2")], [0.5, -1.0])
    assert sc.lookup(ctx, [(1, "h1"), (2, "h2"), (3, "h3")]) == [0.5, -1.0, None]
    assert sc.lookup(ctx, [(1, "changed-text")]) == [None]
    assert sc.lookup(ScoreCache.context_key("recent: clicked Y"), [(1, "h1")]) == [None]
    sc.store(ctx, [(i, "h") for i in range(10, 16)], [0.0] * 6)
    assert sc.stats()["entries"] == 4
