"""Searches of many queries at once that return what one query at a time returns.

A recall channel searches its index one request at a time, excluding the rows the user consumed
(:class:`~recsieve.engine.recall.VectorChannel`, :class:`~recsieve.engine.context.ContextChannel`).
:func:`search_many` gives every request of a chunk those same rows and scores, bit for bit,
with one FAISS call for many queries where the index is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np

from recsieve.indexes.base import SearchParams, VectorIndex
from recsieve.indexes.faiss_index import FaissIndex
from recsieve.training.batched_recall import KeySet, accepted

__all__ = ["DEEPER", "search_many"]

#: A batched search asks for this many rows past ``n + 1`` at most, to drop excluded ones (then deeper if short).
DEEPER = 128


def search_many(index: VectorIndex, queries: np.ndarray, n: int, excludes: Sequence[np.ndarray], accept: np.ndarray,
                params: SearchParams | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query, what a recall channel gets from ``index.search(query, n, exclude=...)``
    followed by its accept check: ``(rows, scores)``; ``excludes[i]`` sorted.

    On an exact FAISS index the queries go in calls of many (under FAISS's BLAS threshold, so each
    query's scores come from the same kernel as a single search), grouped by how many rows they
    exclude and asking for enough more than ``n`` to drop them afterwards. A query whose kept
    scores tie is searched again alone (ties may be ordered otherwise), as is every query of a
    call whose first untied query does not match its own single search. Other indexes are searched one query at a time (their search with exclusions
    is not a search without them, filtered)."""
    empty = (np.empty(0, np.int64), np.empty(0, np.float32))
    if not len(queries) or len(index) == 0:
        return [empty for _ in range(len(queries))]

    def single(i: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = index.search(queries[i : i + 1], n, exclude=excludes[i], params=params)
        keep = ids[0] >= 0
        rows, sc = ids[0][keep], scores[0][keep]
        ok = accepted(rows, accept)
        return np.ascontiguousarray(rows[ok]), np.ascontiguousarray(sc[ok], dtype=np.float32)

    if not (isinstance(index, FaissIndex) and index.kind == "flat"):
        return [single(i) for i in range(len(queries))]
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
    # queries with similar numbers of excluded rows go together: a call asks for n + the most excluded + 1
    order = np.argsort(np.array([e.size for e in excludes], np.int64), kind="stable")
    step = max(1, min(256, int(faiss.cvar.distance_compute_blas_threshold) - 1))
    for start in range(0, order.size, step):
        part = order[start : start + step]
        for i, got in zip(part.tolist(), _search_batch(index, queries[part], n, [excludes[i] for i in part],
                                                      accept, params, lambda j, part=part: single(int(part[j])))):
            out[i] = got
    return out  # type: ignore[return-value]


def _search_batch(index: VectorIndex, queries: np.ndarray, n: int, excludes: Sequence[np.ndarray],
                  accept: np.ndarray, params: SearchParams | None,
                  single: Callable[[int], tuple[np.ndarray, np.ndarray]],
                  deeper: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """One call of :func:`search_many`: the queries' results, each checked as described there.

    It asks for ``n + 1`` plus at most ``deeper`` (default :data:`DEEPER`) rows to drop (a user's consumed rows are rarely
    all among the nearest); queries that come out short are asked again for all they exclude."""
    m = len(queries)
    most = max(e.size for e in excludes)
    deeper = DEEPER if deeper is None else deeper
    scores, ids = index.search(queries, n + 1 + min(most, deeper), params=params)
    width = ids.shape[1]
    base = int(max(ids.max(initial=0), max((int(e.max(initial=0)) for e in excludes), default=0))) + 1
    q = np.repeat(np.arange(m), [e.size for e in excludes])
    dropped = KeySet(q * base + np.concatenate(excludes), m * base).has(np.arange(m)[:, None] * base
                                                                         + np.maximum(ids, 0))
    valid = (ids >= 0) & ~dropped
    rank = np.cumsum(valid, axis=1)
    # short: fewer than n + 1 kept though the index had more to give
    short = set(np.flatnonzero((rank[:, -1] < n + 1) & (ids[:, -1] >= 0)).tolist()) if most > deeper else set()
    # a tie among the first n + 1 kept: the single search may order it otherwise
    head = np.flatnonzero((valid & (rank <= n + 1)).ravel())
    qs, sc = head // width, scores.ravel()[head]
    tied = set(qs[1:][(qs[1:] == qs[:-1]) & (sc[1:] == sc[:-1])].tolist()) - short
    take = valid & (rank <= n) & accepted(np.maximum(ids, 0), accept)
    counts = take.sum(axis=1)
    flat = np.flatnonzero(take.ravel())
    cut = np.cumsum(counts)[:-1]
    batch = list(zip(np.split(ids.ravel()[flat], cut), np.split(scores.ravel()[flat].astype(np.float32), cut)))
    check = next((j for j in range(m) if j not in tied and j not in short), None)
    if check is not None:  # one query searched alone as well: the batch must have found the same
        alone = single(check)
        if not (np.array_equal(alone[0], batch[check][0]) and np.array_equal(alone[1], batch[check][1])):
            tied = set(range(m)) - short  # this FAISS does not search a batch as it searches one query
        batch[check] = alone
    if short:
        redo = sorted(short)
        for j, got in zip(redo, _search_batch(index, queries[redo], n, [excludes[j] for j in redo], accept, params,
                                              lambda r: single(redo[r]), deeper=most)):
            batch[j] = got
    return [single(j) if j in tied and j != check else got for j, got in enumerate(batch)]
