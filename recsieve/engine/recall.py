"""Recall: pluggable channels, each proposing candidates, merged by reciprocal-rank fusion.

Channels:

- :class:`VectorChannel` searches the vector index with the user's query vector (profile,
  short-term interest and instruction combined by the engine);
- :class:`TransitionsChannel` follows first-order item transitions ("people who had X next
  had Y") from the user's most recent items, learned from the event stream;
- :class:`PopularityChannel` proposes the most interacted-with items, so a cold user always
  gets a list.

Each channel returns :class:`~recsieve.types.Candidates`; :func:`fuse` merges them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsieve.filters import Filter
from recsieve.indexes.base import SearchParams, VectorIndex
from recsieve.types import Candidates

__all__ = [
    "RecallRequest",
    "RecallChannel",
    "VectorChannel",
    "TransitionsChannel",
    "PopularityChannel",
    "fuse",
]


@dataclass(frozen=True)
class RecallRequest:
    """What a channel needs to propose candidates for one request.

    ``query``: the normalised query vector (or ``None`` when there is nothing to search with);
    ``recent_rows``: the user's recent items, most recent last; ``exclude``: rows never to
    return; ``accept``: the engine's check that a row is live and passes the filter (used by
    channels that do not push the filter into an index). ``history`` (the user's longer event
    window, :class:`~recsieve.engine.users.RecentEvent` most-recent-last), ``instruction`` (the
    request's text vector) and ``now`` (the request's time) are what the context encoder reads.
    """

    n: int
    query: np.ndarray | None = None
    recent_rows: tuple[int, ...] = ()
    filter: Filter | None = None
    exclude: frozenset[int] = frozenset()
    accept: Callable[[int], bool] = field(default=lambda row: True)
    history: tuple = ()
    instruction: np.ndarray | None = None
    now: float | None = None
    #: scratch space for channels, per request (e.g. a user vector computed once for recall and features)
    memo: dict = field(default_factory=dict, compare=False, repr=False)


def _empty() -> Candidates:
    return Candidates(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


class RecallChannel(ABC):
    """One source of candidates. ``observe`` lets a channel learn from the event stream."""

    name: str = "channel"
    #: Names of the extra ranking-head features :meth:`features` gives (beside rank and score).
    extra_features: tuple[str, ...] = ()

    @abstractmethod
    def recall(self, request: RecallRequest) -> Candidates:
        """Up to ``request.n`` candidates, best first."""

    def observe(self, previous_row: int | None, row: int, positive: bool) -> None:  # noqa: B027
        """Learn from one event of a user (``previous_row``: that user's previous item). Default: nothing."""

    def forget(self, previous_row: int | None, row: int, positive: bool) -> None:  # noqa: B027
        """Undo :meth:`observe` of the same event (counts never go below zero). Default: nothing."""

    def copy(self) -> RecallChannel:
        """An independent copy whose statistics can be changed without touching this one's.
        Default (no statistics): the channel itself."""
        return self

    def features(self, request: RecallRequest, rows: np.ndarray) -> np.ndarray:
        """Extra features of candidate ``rows`` for the ranking head: ``float32``, shape
        ``(len(rows), len(self.extra_features))``. Default: none."""
        return np.zeros((len(rows), 0), np.float32)


class VectorChannel(RecallChannel):
    """Nearest items to the query vector in the vector index (filter pushed into the index)."""

    name = "vector"

    def __init__(self, index: VectorIndex, params: SearchParams | None = None) -> None:
        self.index = index
        self.params = params

    def recall(self, request: RecallRequest) -> Candidates:
        if request.query is None or len(self.index) == 0:
            return _empty()
        exclude = np.fromiter(request.exclude, dtype=np.int64, count=len(request.exclude))
        scores, ids = self.index.search(
            request.query.reshape(1, -1), request.n, filter=request.filter, exclude=exclude, params=self.params
        )
        keep = ids[0] >= 0
        rows, sc = ids[0][keep], scores[0][keep]
        ok = np.fromiter((request.accept(int(r)) for r in rows), dtype=bool, count=rows.size)
        return Candidates(np.ascontiguousarray(rows[ok]), np.ascontiguousarray(sc[ok], dtype=np.float32))


def _top_accepted(scores: dict[int, float] | np.ndarray, request: RecallRequest) -> Candidates:
    """Top ``n`` rows by score among accepted, non-excluded rows (ties broken by row, ascending)."""
    if isinstance(scores, dict):
        if not scores:
            return _empty()
        rows = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
        vals = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    else:
        # Look at a generous head first (argpartition is O(n)); fall back to the whole array.
        head = request.n * 4 + len(request.exclude) + 16
        if head < scores.shape[0]:
            part = np.argpartition(-scores, head)[:head]
            threshold = scores[part].min()
            # Ties are broken by row, so the tie block's lowest rows are the ones to keep.
            part = np.concatenate([np.flatnonzero(scores > threshold), np.flatnonzero(scores == threshold)[:head]])
            got = _top_accepted(dict(zip(part.tolist(), scores[part].tolist())), request)
            if len(got) >= request.n:
                return got
        rows = np.arange(scores.shape[0], dtype=np.int64)
        vals = scores.astype(np.float64, copy=False)
    order = np.lexsort((rows, -vals))
    out_rows, out_scores = [], []
    for i in order:
        r = int(rows[i])
        if r in request.exclude or not request.accept(r):
            continue
        out_rows.append(r)
        out_scores.append(vals[i])
        if len(out_rows) >= request.n:
            break
    return Candidates(np.asarray(out_rows, dtype=np.int64), np.asarray(out_scores, dtype=np.float32))


class TransitionsChannel(RecallChannel):
    """First-order item transitions from the user's last ``depth`` items, recency-decayed.

    ``score(j) = sum_i decay**i * count(r_i -> j) / count(r_i -> *)`` over the recent items
    ``r_0`` (most recent), ``r_1``, …
    """

    name = "transitions"
    extra_features = ("last",)

    def __init__(self, depth: int = 10, decay: float = 0.7) -> None:
        self.depth = depth
        self.decay = decay
        self._next: dict[int, dict[int, float]] = defaultdict(dict)
        self._out: dict[int, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, previous_row: int | None, row: int, positive: bool) -> None:
        if previous_row is None or not positive or previous_row == row:
            return
        with self._lock:
            nxt = self._next[previous_row]
            nxt[row] = nxt.get(row, 0.0) + 1.0
            self._out[previous_row] += 1.0

    def forget(self, previous_row: int | None, row: int, positive: bool) -> None:
        if previous_row is None or not positive or previous_row == row:
            return
        with self._lock:
            nxt = self._next.get(previous_row)
            if not nxt or row not in nxt:
                return
            left = nxt[row] - 1.0
            if left > 0:
                nxt[row] = left
            else:
                del nxt[row]
            self._out[previous_row] = max(0.0, self._out[previous_row] - 1.0)
            if not nxt:
                del self._next[previous_row]
                self._out.pop(previous_row, None)

    def copy(self) -> TransitionsChannel:
        twin = TransitionsChannel(self.depth, self.decay)
        with self._lock:
            twin._next.update((r, dict(nxt)) for r, nxt in self._next.items())
            twin._out.update(self._out)
        return twin

    def recall(self, request: RecallRequest) -> Candidates:
        scores: dict[int, float] = {}
        recent = list(reversed(request.recent_rows))[: self.depth]
        with self._lock:
            for i, r in enumerate(recent):
                nxt = self._next.get(r)
                if not nxt:
                    continue
                w = self.decay**i / self._out[r]
                for j, c in nxt.items():
                    scores[j] = scores.get(j, 0.0) + w * c
        return _top_accepted(scores, request)

    def features(self, request: RecallRequest, rows: np.ndarray) -> np.ndarray:
        """``last``: the share of transitions out of the user's last item that went to each row."""
        out = np.zeros((len(rows), 1), np.float32)
        if request.recent_rows:
            last = request.recent_rows[-1]
            with self._lock:
                nxt, total = self._next.get(last), self._out.get(last, 0.0)
                if nxt and total:
                    out[:, 0] = [nxt.get(int(r), 0.0) / total for r in rows]
        return out


class PopularityChannel(RecallChannel):
    """Most interacted-with items (positive events), so cold users always get candidates."""

    name = "popularity"

    def __init__(self, num_rows: Callable[[], int]) -> None:
        self._num_rows = num_rows
        self._counts = np.zeros(0, dtype=np.float64)
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, previous_row: int | None, row: int, positive: bool) -> None:
        if not positive:
            return
        with self._lock:
            if row >= self._counts.shape[0]:
                grown = np.zeros(max(row + 1, 2 * self._counts.shape[0]), dtype=np.float64)
                grown[: self._counts.shape[0]] = self._counts
                self._counts = grown
            self._counts[row] += 1.0
            self._total += 1.0

    def forget(self, previous_row: int | None, row: int, positive: bool) -> None:
        if not positive:
            return
        with self._lock:
            if row < self._counts.shape[0] and self._counts[row] >= 1.0:
                self._counts[row] -= 1.0
                self._total -= 1.0

    def copy(self) -> PopularityChannel:
        twin = PopularityChannel(self._num_rows)
        with self._lock:
            twin._counts, twin._total = self._counts.copy(), self._total
        return twin

    def count(self, row: int) -> float:
        """How many positive events ``row`` has."""
        return float(self._counts[row]) if row < self._counts.shape[0] else 0.0

    def share(self, row: int) -> float:
        """``row``'s share of all positive events (0 when there are none): a rate that does not
        grow with the log, so statistics over part of the users read like those over all."""
        return self.count(row) / self._total if self._total else 0.0

    def recall(self, request: RecallRequest) -> Candidates:
        n_rows = self._num_rows()
        with self._lock:
            counts = np.zeros(n_rows, dtype=np.float64)
            m = min(n_rows, self._counts.shape[0])
            counts[:m] = self._counts[:m]
        got = _top_accepted(counts, request)
        if request.query is not None or request.recent_rows:
            # Other channels have something to say: propose only items someone interacted with.
            # For a cold request this channel is the only source, so never-seen items fill the list.
            got = Candidates(got.rows[got.scores > 0], got.scores[got.scores > 0])
        return got


def fuse(lists: Sequence[Candidates], weights: Sequence[float], n: int, k0: float = 60.0) -> Candidates:
    """Reciprocal-rank fusion: ``score(row) = sum_c weights[c] / (k0 + rank_c(row))``, top ``n``.

    Ties are broken by the row's best rank in any list, then by row.
    """
    fused: dict[int, float] = {}
    best: dict[int, int] = {}
    for cands, w in zip(lists, weights):
        for rank, r in enumerate(cands.rows.tolist(), start=1):
            fused[r] = fused.get(r, 0.0) + w / (k0 + rank)
            best[r] = min(best.get(r, rank), rank)
    if not fused:
        return _empty()
    rows = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    vals = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    ranks = np.fromiter((best[r] for r in fused), dtype=np.int64, count=len(fused))
    order = np.lexsort((rows, ranks, -vals))[:n]
    return Candidates(rows[order], vals[order].astype(np.float32))
