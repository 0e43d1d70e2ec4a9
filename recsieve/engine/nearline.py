"""Near-line refresh: recompute hot users' lists in the background after their events.

A bounded queue of user ids feeds a few worker threads. Several events of one user that
arrive before the worker gets to it coalesce into one job. Each job calls ``compute(user_id)``
(the engine re-runs the user's recent requests with the full pipeline and stores the answers
in the result cache). Shutdown either drains the queue or cancels what is left; threads are
always joined.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError

__all__ = ["NearlineRefresher"]

log = logging.getLogger("recsieve")
_STOP = object()


class NearlineRefresher:
    """Background refresh of hot users' cached lists (bounded queue, coalescing, clean shutdown)."""

    def __init__(self, compute: Callable[[str], None], *, threads: int = 1, max_queue: int = 1024) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInputError("threads", threads, "must be a positive integer")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise InvalidInputError("max_queue", max_queue, "must be a positive integer")
        self._compute = compute
        self._queue: queue.Queue[Any] = queue.Queue()
        self._max_queue = max_queue
        self._pending: dict[str, float] = {}  # queued user -> time of the oldest event not yet refreshed
        self._active: dict[str, int] = {}  # users whose refresh is running -> number of running jobs
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0
        self._latencies: deque[float] = deque(maxlen=10_000)
        self.submitted = self.coalesced = self.dropped = self.done = self.failed = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"recsieve-refresh-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, user_id: str, event_time: float | None = None) -> bool:
        """Ask for ``user_id`` to be refreshed; returns ``False`` when dropped (queue full or closed)."""
        t = time.perf_counter() if event_time is None else event_time
        with self._lock:
            if self._closed:
                return False
            if user_id in self._pending:
                self.coalesced += 1
                return True
            if len(self._pending) >= self._max_queue:
                self.dropped += 1
                return False
            self._pending[user_id] = t
            self.submitted += 1
        self._queue.put(user_id)
        return True

    def is_pending(self, user_id: str) -> bool:
        """Whether a refresh of ``user_id`` is queued or running."""
        return user_id in self._pending or user_id in self._active

    def _work(self) -> None:
        while True:
            user_id = self._queue.get()
            if user_id is _STOP:
                return
            with self._lock:
                # Leave the queue before computing: an event arriving from now on needs a new job.
                started = self._pending.pop(user_id, None)
                self._active[user_id] = self._active.get(user_id, 0) + 1
                self._running += 1
            try:
                self._compute(user_id)
                ok = True
            except Exception:  # a failed refresh must not kill the worker; the next request computes fresh
                log.exception("recsieve: near-line refresh of user %r failed", user_id)
                ok = False
            with self._lock:
                self._active[user_id] -= 1
                if not self._active[user_id]:
                    del self._active[user_id]
                self._running -= 1
                if ok:
                    self.done += 1
                    if started is not None:
                        self._latencies.append(time.perf_counter() - started)
                else:
                    self.failed += 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no refresh is queued or running; returns ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop the workers: ``drain`` finishes queued jobs first, otherwise they are cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not drain:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    self._pending.pop(item, None)
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout)

    def stats(self) -> dict[str, Any]:
        """Queue length, counters and refresh latency (event -> refreshed list) percentiles in ms."""
        with self._lock:
            lat = np.asarray(self._latencies, dtype=np.float64) * 1000
            out: dict[str, Any] = {
                "queue": len(self._pending),
                "submitted": self.submitted,
                "coalesced": self.coalesced,
                "dropped": self.dropped,
                "done": self.done,
                "failed": self.failed,
            }
        if lat.size:
            out.update(latency_p50_ms=float(np.percentile(lat, 50)), latency_p95_ms=float(np.percentile(lat, 95)))
        return out
