"""Hot users: the result cache in front of the pipeline, and the near-line refresh behind it.

A request's answer is cached under a key that holds everything it depends on (user version,
catalog version, model version, the request), so a cached answer is never staler than the
last acknowledged write. Users who ask are remembered with their last few distinct requests;
when such a user's events arrive, the near-line refresher recomputes those requests in the
background with the full pipeline and puts the fresh answers in the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from recsieve.engine.cache import MemoryCache, RedisCache, ResultCache, result_key
from recsieve.engine.config import EngineConfig
from recsieve.engine.nearline import NearlineRefresher
from recsieve.types import Recommendation

__all__ = ["HotUsers", "make_result_cache", "Request"]

#: (k, instruction, filter text): what a cached answer was computed for.
Request = tuple[int, str | None, str | None]

#: cache name -> factory. The only place cache backends are named.
_CACHES: dict[str, Callable[[EngineConfig], ResultCache | None]] = {
    "memory": lambda c: MemoryCache(c.cache_entries, c.cache_mb << 20, c.cache_ttl_s),
    "redis": lambda c: RedisCache(c.redis_url, ttl_s=c.cache_ttl_s),
    "none": lambda c: None,
}
#: How many distinct recent requests of a hot user the near-line refresh recomputes.
HOT_REQUESTS = 3


def make_result_cache(config: EngineConfig) -> ResultCache | None:
    """The result cache the config names (``None`` for ``cache = "none"``)."""
    return _CACHES[config.cache](config)


class HotUsers:
    """The result cache, the users who asked recently (with their last distinct requests), and
    the near-line refresher that recomputes those requests after a hot user's events.

    ``refresh(user_id, request)``: recompute one request (the full pipeline) and return the
    key it was computed for and the answer; the key is taken *before* computing, so a write
    meanwhile makes the stored answer unreachable rather than stale.
    """

    def __init__(self, config: EngineConfig,
                 refresh: Callable[[str, Request], tuple[str, list[Recommendation]]]) -> None:
        self.cache = make_result_cache(config)
        self._refresh = refresh
        self._max_users = config.cache_entries
        self._hot: OrderedDict[str, OrderedDict[Request, None]] = OrderedDict()
        self._lock = threading.Lock()
        self.refresher: NearlineRefresher | None = None
        if self.cache is not None and config.refresh_threads > 0:
            self.refresher = NearlineRefresher(self._refresh_user, threads=config.refresh_threads,
                                               max_queue=config.refresh_queue)

    @staticmethod
    def key(user_id: str, user_version: int, catalog_version: int, model_version: str, request: Request) -> str:
        """The result key of one request (see :func:`~recsieve.engine.cache.result_key`)."""
        return result_key(user_id, user_version, catalog_version, model_version, *request)

    def remember(self, user_id: str, request: Request) -> None:
        """Track a hot user and its recent distinct requests (for near-line refresh)."""
        with self._lock:
            reqs = self._hot.get(user_id)
            if reqs is None:
                reqs = self._hot[user_id] = OrderedDict()
            self._hot.move_to_end(user_id)
            reqs[request] = None
            reqs.move_to_end(request)
            while len(reqs) > HOT_REQUESTS:
                reqs.popitem(last=False)
            while len(self._hot) > self._max_users:
                self._hot.popitem(last=False)

    def pending(self, user_id: str) -> bool:
        """Whether a near-line refresh of this user is on its way."""
        return self.refresher is not None and self.refresher.is_pending(user_id)

    def events_arrived(self, users: Iterable[str]) -> None:
        """Queue a refresh for each of ``users`` that is hot."""
        if self.refresher is None:
            return
        t = time.perf_counter()
        for user in dict.fromkeys(users):
            if user in self._hot:
                self.refresher.submit(user, t)

    def _refresh_user(self, user_id: str) -> None:
        with self._lock:
            requests = list(self._hot.get(user_id, ()))
        for request in requests:
            key, recs = self._refresh(user_id, request)
            self.cache.put(key, recs, force=True)

    def __len__(self) -> int:
        return len(self._hot)

    def stats(self) -> dict:
        return {
            "cache": self.cache.stats() if self.cache is not None else None,
            "refresh": self.refresher.stats() if self.refresher is not None else None,
            "hot_users": len(self._hot),
        }

    def wait_refreshed(self, timeout: float | None = None) -> bool:
        return self.refresher is None or self.refresher.wait_idle(timeout)

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.close(drain=False)
        if self.cache is not None:
            self.cache.close()
