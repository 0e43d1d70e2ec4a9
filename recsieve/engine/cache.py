"""Caches for hot users: whole result lists, and cross-encoder scores per (context, item).

A result key holds everything an answer depends on: the user and the user's version (events
applied), the catalog and model versions, and the request (k, instruction, filter). Any
event or catalog change therefore makes old entries unreachable: a cached answer is never
staler than the last acknowledged write. Unreachable entries age out of the LRU.

``MemoryCache`` is in-process (LRU bounded by entries and bytes, TTL, admission on the second
request of a key so a scan of one-time users does not flush hot ones). ``RedisCache`` has the
same interface for several worker processes; its miss counters for admission live in Redis too.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recsieve.errors import InvalidInputError, MissingDependencyError
from recsieve.types import Recommendation

__all__ = ["ResultCache", "MemoryCache", "RedisCache", "ScoreCache", "result_key", "CacheStats"]


def result_key(user_id: str, user_version: int, catalog_version: int, model_version: str, k: int,
               instruction: str | None, filters: str | None) -> str:
    """A stable key (sha256, not Python's salted ``hash``) for one request's answer."""
    raw = json.dumps([user_id, user_version, catalog_version, model_version, k, instruction, filters])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def encode(recs: Sequence[Recommendation]) -> bytes:
    """Serialise a result list (JSON)."""
    return json.dumps([r.to_dict() for r in recs], separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> list[Recommendation]:
    """Inverse of :func:`encode`."""
    return [Recommendation(**d) for d in json.loads(data)]


@dataclass
class CacheStats:
    """Counters of a cache (cumulative since creation)."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    rejected: int = 0  # puts refused by admission
    evictions: int = 0
    expirations: int = 0
    entries: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return dict(self.__dict__, hit_ratio=(self.hits / total) if total else 0.0)


class ResultCache(ABC):
    """Where recommendation lists are cached (one interface, several backends)."""

    @abstractmethod
    def get(self, key: str) -> list[Recommendation] | None:
        """The cached list for ``key``, or ``None`` (a miss)."""

    @abstractmethod
    def put(self, key: str, value: Sequence[Recommendation], *, force: bool = False) -> bool:
        """Store a list; ``force`` skips admission (near-line refreshes of hot users). Returns whether stored."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Hit/miss/eviction counters and current size."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release resources."""


class MemoryCache(ResultCache):
    """In-process LRU bounded by ``max_entries`` and ``max_bytes``, with a TTL and admission.

    Admission: a key is stored after its second miss within the recent-keys window (a
    doorkeeper of ``2 * max_entries`` keys), or at once with ``admit_on_first=True``; the
    engine's near-line refresh stores with ``force=True``.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 << 20, ttl_s: float = 300.0, *,
                 admit_on_first: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, value, "must be a positive integer")
        if not ttl_s > 0:
            raise InvalidInputError("ttl_s", ttl_s, "must be positive")
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self.admit_on_first = admit_on_first
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, int, tuple[Recommendation, ...]]] = OrderedDict()
        self._seen: OrderedDict[str, int] = OrderedDict()  # key -> misses while not cached
        self._lock = threading.Lock()
        self._stats = CacheStats()

    def get(self, key: str) -> list[Recommendation] | None:
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] <= now:
                self._drop(key)
                self._stats.expirations += 1
                entry = None
            if entry is None:
                self._stats.misses += 1
                self._seen[key] = self._seen.get(key, 0) + 1
                self._seen.move_to_end(key)
                while len(self._seen) > 2 * self.max_entries:
                    self._seen.popitem(last=False)
                return None
            self._data.move_to_end(key)
            self._stats.hits += 1
            return list(entry[2])

    def put(self, key: str, value: Sequence[Recommendation], *, force: bool = False) -> bool:
        size = 64 + sum(96 + len(r.item_id) + len(r.reason) for r in value)
        with self._lock:
            if not (force or self.admit_on_first or self._seen.get(key, 0) >= 2 or key in self._data):
                self._stats.rejected += 1
                return False
            if size > self.max_bytes:
                self._stats.rejected += 1
                return False
            if key in self._data:
                self._drop(key)
            self._data[key] = (self._clock() + self.ttl_s, size, tuple(value))
            self._stats.bytes += size
            self._stats.puts += 1
            while len(self._data) > self.max_entries or self._stats.bytes > self.max_bytes:
                oldest = next(iter(self._data))
                self._drop(oldest)
                self._stats.evictions += 1
            self._stats.entries = len(self._data)
            return True

    def _drop(self, key: str) -> None:
        _, size, _ = self._data.pop(key)
        self._stats.bytes -= size
        self._stats.entries = len(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats.as_dict(), backend="memory")


class RedisCache(ResultCache):
    """The same interface over Redis, shared by several worker processes.

    Entries expire by Redis TTL and are evicted by the server's ``maxmemory`` policy (set
    ``allkeys-lru``); admission uses a short-lived "seen" marker per key.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, ttl_s: float = 300.0, prefix: str = "recsieve:",
                 admit_on_first: bool = False, client: Any = None) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is a dev dependency
            raise MissingDependencyError("RedisCache needs redis-py: pip install 'recsieve[redis]'") from None
        self._redis = client if client is not None else redis.Redis.from_url(url)
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self.admit_on_first = admit_on_first
        self._stats = CacheStats()
        self._lock = threading.Lock()

    def get(self, key: str) -> list[Recommendation] | None:
        data = self._redis.get(self.prefix + "r:" + key)
        with self._lock:
            if data is None:
                self._stats.misses += 1
            else:
                self._stats.hits += 1
        if data is None:
            seen = self.prefix + "seen:" + key
            pipe = self._redis.pipeline()
            pipe.incr(seen)
            pipe.pexpire(seen, self.ttl_ms)
            pipe.execute()
            return None
        return decode(data)

    def put(self, key: str, value: Sequence[Recommendation], *, force: bool = False) -> bool:
        if not (force or self.admit_on_first or int(self._redis.get(self.prefix + "seen:" + key) or 0) >= 2):
            with self._lock:
                self._stats.rejected += 1
            return False
        self._redis.set(self.prefix + "r:" + key, encode(value), px=self.ttl_ms)
        with self._lock:
            self._stats.puts += 1
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = self._stats.as_dict()
        out["backend"] = "redis"
        out["entries"] = sum(1 for _ in self._redis.scan_iter(match=self.prefix + "r:*", count=1000))
        return out

    def close(self) -> None:
        self._redis.close()


class ScoreCache:
    """Cross-encoder scores per (rendered-context hash, item row, item text hash), LRU-bounded."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, int, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def context_key(context: str) -> str:
        return hashlib.sha256(context.encode("utf-8")).hexdigest()[:32]

    def lookup(self, context_key: str, keys: Sequence[tuple[int, str]]) -> list[float | None]:
        """Cached score or ``None`` for each ``(row, text hash)``."""
        out: list[float | None] = []
        with self._lock:
            for row, h in keys:
                v = self._data.get((context_key, row, h))
                if v is not None:
                    self._data.move_to_end((context_key, row, h))
                out.append(v)
            found = sum(v is not None for v in out)
            self.hits += found
            self.misses += len(out) - found
        return out

    def store(self, context_key: str, keys: Sequence[tuple[int, str]], scores: Sequence[float]) -> None:
        with self._lock:
            for (row, h), s in zip(keys, scores):
                self._data[(context_key, row, h)] = float(s)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._data), "hits": self.hits, "misses": self.misses}
