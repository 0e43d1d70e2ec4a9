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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from recsieve.errors import CorruptStoreError
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
    """One source of candidates. ``observe`` lets a channel learn from the event stream.

    A channel with statistics saves them in the engine's snapshot: :meth:`state` gives them as
    arrays, :meth:`load_state` puts them back, :meth:`observe_many` learns from many events at
    once (the journal's tail on open) with exactly the result of :meth:`observe` one by one.
    """

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

    def observe_many(self, previous_rows: np.ndarray, rows: np.ndarray, positive: np.ndarray) -> None:
        """:meth:`observe` of many events, in order: ``previous_rows`` (int64, ``-1`` for none),
        ``rows`` (int64) and ``positive`` (bool), one entry per event. Default: one by one
        (nothing at all when the channel does not observe)."""
        if type(self).observe is RecallChannel.observe:
            return
        for prev, row, pos in zip(previous_rows.tolist(), rows.tolist(), positive.tolist()):
            self.observe(None if prev < 0 else prev, row, pos)

    def state(self) -> dict[str, np.ndarray] | None:
        """The statistics as arrays, for a snapshot (one consistent moment); ``None``: this
        channel has none (nothing to save)."""
        return None

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:  # noqa: B027
        """Replace the statistics with what :meth:`state` gave. Default (none): nothing."""

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

    def observe_many(self, previous_rows: np.ndarray, rows: np.ndarray, positive: np.ndarray) -> None:
        """:meth:`observe` of many events at once: the counted pairs are grouped with numpy,
        then added per source row (the same counts as one by one: they are whole numbers)."""
        prev, rows, positive = (np.asarray(a) for a in (previous_rows, rows, positive))
        keep = positive.astype(bool) & (prev >= 0) & (prev != rows)
        if not keep.any():
            return
        src, dst = prev[keep].astype(np.int64), rows[keep].astype(np.int64)
        order = np.argsort(src * (int(dst.max()) + 1) + dst)  # by source, then next row (lexsort's order, faster)
        src, dst = src[order], dst[order]
        first = np.ones(src.size, dtype=bool)
        first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, src.size)).astype(np.float64)
        src, dst = src[starts], dst[starts]
        new_src = np.ones(src.size, dtype=bool)
        new_src[1:] = src[1:] != src[:-1]
        bounds = np.append(np.flatnonzero(new_src), src.size).tolist()
        out = np.add.reduceat(counts, bounds[:-1]).tolist()
        src_l, dst_l, cnt_l = src.tolist(), dst.tolist(), counts.tolist()
        with self._lock:
            for k in range(len(bounds) - 1):
                a, b = bounds[k], bounds[k + 1]
                r = src_l[a]
                nxt = self._next[r]
                if not nxt:
                    nxt.update(zip(dst_l[a:b], cnt_l[a:b]))
                else:
                    for j, c in zip(dst_l[a:b], cnt_l[a:b]):
                        nxt[j] = nxt.get(j, 0.0) + c
                self._out[r] += out[k]

    def state(self) -> dict[str, np.ndarray]:
        """Compressed sparse rows: source ``rows`` (ascending), ``offsets`` into ``next_rows`` /
        ``counts`` (each source's transitions, next rows ascending), ``out`` (each source's total)."""
        with self._lock:
            sources = sorted(r for r, nxt in self._next.items() if nxt)
            sizes = np.fromiter((len(self._next[r]) for r in sources), dtype=np.int64, count=len(sources))
            total = int(sizes.sum())
            dst = np.fromiter(chain.from_iterable(self._next[r].keys() for r in sources), np.int64, count=total)
            cnt = np.fromiter(chain.from_iterable(self._next[r].values() for r in sources), np.float64, count=total)
            out = np.fromiter((self._out.get(r, 0.0) for r in sources), dtype=np.float64, count=len(sources))
        order = np.lexsort((dst, np.repeat(np.arange(len(sources)), sizes)))
        return {
            "rows": np.asarray(sources, dtype=np.int64),
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "next_rows": dst[order],
            "counts": cnt[order],
            "out": out,
        }

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            rows, offsets = np.asarray(state["rows"], np.int64), np.asarray(state["offsets"], np.int64)
            nxt_rows, counts = np.asarray(state["next_rows"], np.int64), np.asarray(state["counts"], np.float64)
            out = np.asarray(state["out"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"transitions statistics: unreadable ({exc})") from None
        n = rows.size
        if (offsets.shape != (n + 1,) or out.shape != (n,) or nxt_rows.shape != counts.shape
                or (n and (offsets[0] != 0 or offsets[-1] != nxt_rows.size or np.any(np.diff(offsets) < 0)))
                or (not n and nxt_rows.size)):
            raise CorruptStoreError("transitions statistics: arrays of inconsistent shapes")
        nexts: dict[int, dict[int, float]] = defaultdict(dict)
        outs: dict[int, float] = defaultdict(float)
        bounds, dst, cnt = offsets.tolist(), nxt_rows.tolist(), counts.tolist()
        for k, (r, total) in enumerate(zip(rows.tolist(), out.tolist())):
            nexts[r] = dict(zip(dst[bounds[k]: bounds[k + 1]], cnt[bounds[k]: bounds[k + 1]]))
            outs[r] = total
        with self._lock:
            self._next, self._out = nexts, outs

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], depth: int = 10, decay: float = 0.7) -> TransitionsChannel:
        """A channel with the statistics :meth:`state` gave."""
        channel = cls(depth, decay)
        channel.load_state(state)
        return channel

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

    def observe_many(self, previous_rows: np.ndarray, rows: np.ndarray, positive: np.ndarray) -> None:
        """:meth:`observe` of many events at once (one ``bincount``)."""
        hits = np.asarray(rows, dtype=np.int64)[np.asarray(positive, dtype=bool)]
        if not hits.size:
            return
        need = int(hits.max()) + 1
        with self._lock:
            if need > self._counts.shape[0]:
                grown = np.zeros(max(need, 2 * self._counts.shape[0]), dtype=np.float64)
                grown[: self._counts.shape[0]] = self._counts
                self._counts = grown
            self._counts[:need] += np.bincount(hits, minlength=need)
            self._total += float(hits.size)

    def state(self) -> dict[str, np.ndarray]:
        """``counts`` (positive events per row) and ``total`` (their sum, shape ``(1,)``)."""
        with self._lock:
            return {"counts": self._counts.copy(), "total": np.array([self._total], dtype=np.float64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            counts = np.array(state["counts"], dtype=np.float64)
            total = np.asarray(state["total"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"popularity statistics: unreadable ({exc})") from None
        if counts.ndim != 1 or total.shape != (1,):
            raise CorruptStoreError("popularity statistics: arrays of unexpected shapes")
        with self._lock:
            self._counts, self._total = counts, float(total[0])

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], num_rows: Callable[[], int]) -> PopularityChannel:
        """A channel with the statistics :meth:`state` gave (``num_rows``: the catalog's row count)."""
        channel = cls(num_rows)
        channel.load_state(state)
        return channel

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
