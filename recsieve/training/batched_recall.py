"""Recall for many training requests at once, each with statistics that leave its user out.

:mod:`recsieve.training.batched_examples` builds the ranking head's examples in chunks of
requests; this module holds the parts that run over a whole chunk with numpy instead of once
per request in Python: the transition and popularity channels' candidates read from their
statistics as arrays (:meth:`~recsieve.engine.recall.RecallChannel.state`) minus the user's own
contribution, vector searches in one call, reciprocal-rank fusion and the per-channel rank and
score features. Each reproduces what serving computes for one request (the same candidates in the
same order, the same scores): the channels' ``recall`` and ``features``,
:func:`~recsieve.engine.recall.fuse` and :func:`~recsieve.engine.ranker.candidate_features`;
``tests/test_batched_examples.py`` checks each against serving's on random inputs.

Candidate lists of a chunk are :class:`Lists`: rows and scores of every request, concatenated,
with offsets. Keys ``group * R + row`` (``R`` above every row) match rows of one request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsieve.engine.recall import PopularityChannel, TransitionsChannel

__all__ = ["DENSE_LIMIT", "Lists", "unique_sorted", "order_by", "KeySet", "lookup", "OwnSteps", "TransitionTable",
           "PopularityTable", "fuse_many", "accepted"]

#: A chunk's transition scores are summed in a dense (requests x rows) matrix up to this many cells.
DENSE_LIMIT = 1 << 23


@dataclass
class Lists:
    """Candidate lists of ``len(offsets) - 1`` requests: request ``g`` has
    ``rows[offsets[g]:offsets[g + 1]]`` (int64) with ``scores`` (float32), best first."""

    rows: np.ndarray
    scores: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_sorted(cls, groups: np.ndarray, rows: np.ndarray, scores: np.ndarray, n_groups: int,
                    n: int | None = None) -> Lists:
        """Lists from entries sorted by group (then best first); with ``n``, each request's first ``n``."""
        offsets = np.searchsorted(groups, np.arange(n_groups + 1)).astype(np.int64)
        if n is not None and groups.size:
            keep = np.arange(groups.size) - offsets[groups] < n
            groups, rows, scores = groups[keep], rows[keep], scores[keep]
            offsets = np.searchsorted(groups, np.arange(n_groups + 1)).astype(np.int64)
        return cls(rows.astype(np.int64, copy=False), scores.astype(np.float32, copy=False), offsets)

    @classmethod
    def empty(cls, n_groups: int) -> Lists:
        return cls(np.empty(0, np.int64), np.empty(0, np.float32), np.zeros(n_groups + 1, np.int64))

    @classmethod
    def concat(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> Lists:
        """Lists from one ``(rows, scores)`` per request."""
        sizes = np.fromiter((len(r) for r, _ in parts), np.int64, count=len(parts))
        rows = np.concatenate([r for r, _ in parts]) if parts else np.empty(0, np.int64)
        scores = np.concatenate([s for _, s in parts]) if parts else np.empty(0, np.float32)
        return cls(rows.astype(np.int64, copy=False), scores.astype(np.float32, copy=False),
                   np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    @property
    def n_groups(self) -> int:
        return len(self.offsets) - 1

    def groups(self) -> np.ndarray:
        """The request of every entry."""
        return np.repeat(np.arange(self.n_groups), np.diff(self.offsets))

    def ranks(self) -> np.ndarray:
        """Every entry's 1-based rank in its request's list."""
        return np.arange(self.rows.size) - np.repeat(self.offsets[:-1], np.diff(self.offsets)) + 1

    def get(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[g], self.offsets[g + 1]
        return self.rows[a:b], self.scores[a:b]

    def subset(self, groups: np.ndarray) -> Lists:
        """The lists of some requests, in the order given."""
        return Lists.concat([self.get(int(g)) for g in groups])


def unique_sorted(keys: np.ndarray) -> np.ndarray:
    """The distinct values of an int64 array, ascending (``np.unique`` without its hash pass)."""
    s = np.sort(keys)
    if s.size:
        s = s[np.concatenate([[True], s[1:] != s[:-1]])]
    return s


def _grouped(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For non-negative int64 ``keys``: the order sorting them by key then position (a stable
    sort), the distinct keys (ascending), and each entry's index among them."""
    n = keys.size
    order = np.sort(keys * n + np.arange(n)) % n
    k = keys[order]
    first = np.concatenate([[True], k[1:] != k[:-1]]) if n else np.zeros(0, bool)
    inv = np.empty(n, np.int64)
    inv[order] = np.cumsum(first) - 1
    return order, k[first], inv


def _sum_in_order(keys: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (ascending, non-negative) and, for each, its ``vals`` added in the order
    they come (``0.0 + v0 + v1 + ...``, as a dict accumulates them, not numpy's pairwise sum)."""
    if not keys.size:
        return keys, np.zeros(0)
    n = keys.size
    order = np.sort(keys * n + np.arange(n)) % n  # by key, then position: a stable sort by key
    k = keys[order]
    first = np.concatenate([[True], k[1:] != k[:-1]])
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, n))
    sums = np.zeros(starts.size)
    for p in range(int(lengths.max())):
        seg = np.flatnonzero(lengths > p)
        sums[seg] += vals[order[starts[seg] + p]]
    return k[starts], sums


def order_by(*keys: np.ndarray) -> np.ndarray:
    """Indices sorting by ``keys[0]``, then ``keys[1]``, ... ascending (``np.lexsort(keys[::-1])``),
    for keys that together tell every entry apart: each key becomes a dense integer rank (equal
    floats share one) and the ranks are packed into one int64, sorted once."""
    n = keys[0].size
    code, span = np.zeros(n, np.int64), 1
    for k in keys:
        if k.dtype.kind == "f":
            o = np.argsort(k)
            sk = k[o]
            r = np.empty(n, np.int64)
            r[o] = np.cumsum(np.concatenate([[0], sk[1:] != sk[:-1]])) if n else 0
        else:
            r = k.astype(np.int64) - (int(k.min()) if n else 0)
        m = int(r.max()) + 1 if n else 1
        if span * m >= 2**62:
            return np.lexsort(keys[::-1])
        code, span = code * m + r, span * m
    return np.argsort(code)


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys`` (ascending)."""
    if not sorted_keys.size:
        return np.zeros(keys.shape, bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


class KeySet:
    """A set of non-negative int64 keys below ``universe``: a bit mask when that is small (a chunk's
    ``group * R + row`` keys usually are), else sorted keys and binary search."""

    def __init__(self, keys: np.ndarray, universe: int) -> None:
        self.mask: np.ndarray | None = None
        self.keys = unique_sorted(keys)
        if universe <= 1 << 26:
            self.mask = np.zeros(universe + 1, bool)
            self.mask[self.keys] = True

    def __contains__(self, key: object) -> bool:  # pragma: no cover - for debugging
        return bool(self.has(np.array([key], np.int64))[0])

    def has(self, keys: np.ndarray) -> np.ndarray:
        if self.mask is not None:
            return self.mask[np.clip(keys, 0, self.mask.size - 1)] & (keys >= 0) & (keys < self.mask.size)
        return _member(keys, self.keys)


def lookup(keys: np.ndarray, sorted_keys: np.ndarray, values: np.ndarray, default: float = 0.0) -> np.ndarray:
    """``values`` at each of ``keys`` in ``sorted_keys`` (ascending, unique), ``default`` where absent."""
    out = np.full(keys.shape, default, dtype=values.dtype if values.size else np.float64)
    if sorted_keys.size:
        at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
        hit = sorted_keys[at] == keys
        out[hit] = values[at[hit]]
    return out


def _take_first(order_groups: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """Among entries sorted by group, those kept and among the first ``n`` kept of their group."""
    idx = np.flatnonzero(keep)
    g = order_groups[idx]
    pos = np.arange(idx.size) - np.searchsorted(g, np.arange(int(g.max(initial=-1)) + 2))[g]
    return idx[pos < n]


def _counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.sort(keys)
    if not s.size:
        return s, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    return s[starts], np.diff(np.append(starts, s.size))


class OwnSteps:
    """What some users' own steps added to the statistics (as :func:`~recsieve.training.examples.observe_steps`
    feeds them): per user, the positive rows counted by popularity and the transition pairs
    ``(previous positive row, row)``, with how often each occurs. ``positives[u]``: the rows of
    user ``u``'s positive steps, in order. Keys carry the user's index in this table."""

    def __init__(self, positives: Sequence[np.ndarray], base: int) -> None:
        self.base = base  # R: above every row
        n_users = self.n_users = len(positives)
        if base * base * max(n_users, 1) >= 2**62:
            raise OverflowError("catalog too large for this chunk's keys")
        users = np.repeat(np.arange(n_users, dtype=np.int64), [len(p) for p in positives])
        rows = np.concatenate(positives).astype(np.int64) if n_users else np.empty(0, np.int64)
        # popularity: (user, row) -> count
        self.item_keys, self.item_counts = _counts(users * base + rows)
        # transitions: consecutive positive rows of one user, the same row twice not counted
        same_user = users[1:] == users[:-1]
        src, dst, pair_users = rows[:-1][same_user], rows[1:][same_user], users[1:][same_user]
        moved = src != dst
        src, dst, pair_users = src[moved], dst[moved], pair_users[moved]
        self.pair_keys, self.pair_counts = _counts((pair_users * base + src) * base + dst)

    def item_count(self, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return lookup(users * self.base + rows, self.item_keys, self.item_counts.astype(np.float64))

    def pair_count(self, users: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return lookup((users * self.base + src) * self.base + dst, self.pair_keys, self.pair_counts.astype(np.float64))

    def pairs_from(self, users: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The own pairs out of each ``(users[e], src[e])``: ``(e, dst, count)`` per pair."""
        user_src = self.pair_keys // self.base
        lo = np.searchsorted(user_src, users * self.base + src)
        hi = np.searchsorted(user_src, users * self.base + src, side="right")
        sizes = hi - lo
        owner = np.repeat(np.arange(users.size), sizes)
        at = np.arange(owner.size) - np.repeat(np.cumsum(sizes) - sizes, sizes) + np.repeat(lo, sizes)
        return owner, self.pair_keys[at] % self.base, self.pair_counts[at].astype(np.float64)


class TransitionTable:
    """A :class:`~recsieve.engine.recall.TransitionsChannel`'s statistics as sorted arrays, read with
    some users' own pairs taken out (as its ``forget`` would: counts never below zero, a pair the
    statistics lack is left alone)."""

    def __init__(self, channel: TransitionsChannel) -> None:
        st = channel.state()
        self.depth, self.decay = channel.depth, channel.decay
        self.weights = [channel.decay**i for i in range(channel.depth)]  # the channel's own float arithmetic
        self.src, self.offsets, self.next_rows = st["rows"], st["offsets"], st["next_rows"]
        self.counts, self.out = st["counts"], st["out"]
        #: 1 + the highest row the statistics name
        self.rows_needed = max(int(self.src.max()) + 1 if self.src.size else 0,
                               int(self.next_rows.max()) + 1 if self.next_rows.size else 0)
        self.base = 0

    def set_base(self, base: int) -> None:
        """Index the table for keys ``row * base + row`` (``base``: at least :attr:`rows_needed`)."""
        self.base = base
        self.src_index = np.full(base, -1, np.int64)
        self.src_index[self.src] = np.arange(self.src.size)
        sizes = np.diff(self.offsets)
        self.pair_keys = np.repeat(self.src, sizes) * base + self.next_rows  # ascending
        self.slice_sums = np.zeros(self.src.size)
        if self.counts.size:
            nonempty = sizes > 0
            self.slice_sums[nonempty] = np.add.reduceat(self.counts, self.offsets[:-1][nonempty])

    def taken_out(self, own: OwnSteps) -> tuple[np.ndarray, np.ndarray]:
        """Per (user, source row) with own pairs: sorted keys ``user * R + source`` and how much
        forgetting them takes off the source's total (only pairs the statistics hold count)."""
        keys = own.pair_keys
        if not keys.size:
            return keys, np.zeros(0)
        b = own.base
        pair = keys % (b * b)
        have = lookup(pair // b * self.base + pair % b, self.pair_keys, self.counts)
        taken = np.minimum(have, own.pair_counts)
        user_src = keys // b
        first = np.ones(user_src.size, bool)
        first[1:] = user_src[1:] != user_src[:-1]
        return user_src[first], np.add.reduceat(taken, np.flatnonzero(first))

    def left(self, users: np.ndarray, src: np.ndarray, dst: np.ndarray, idx: np.ndarray, own: OwnSteps) -> np.ndarray:
        """Counts of pairs ``idx`` (positions in the table, for ``src -> dst``) without ``users``' own."""
        return np.maximum(self.counts[idx] - own.pair_count(users, src, dst), 0.0)

    def source_state(self, users: np.ndarray, src: np.ndarray, own: OwnSteps,
                     taken: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per (user, source row): the table index (-1: none), the total out of it and whether
        any transition out of it is left once the user's own are taken out."""
        s = np.where(src < self.base, self.src_index[np.minimum(src, self.base - 1)], -1)
        dec = lookup(users * own.base + src, taken[0], taken[1])
        out = np.where(s >= 0, np.maximum(0.0, self.out[np.maximum(s, 0)] - dec), 0.0)
        alive = (s >= 0) & (np.where(s >= 0, self.slice_sums[np.maximum(s, 0)], 0.0) - dec > 0)
        return s, out, alive

    def recall(self, recent: Sequence[Sequence[int]], users: np.ndarray, own: OwnSteps, n: int, accept: np.ndarray,
               exclude: KeySet, taken: tuple[np.ndarray, np.ndarray]) -> Lists:
        """The channel's candidates for each request: ``recent[g]`` its recent positive rows (most
        recent last), ``users[g]`` its user (in ``own``), ``exclude`` keys ``g * R + row``."""
        g_of, i_of, src = [], [], []
        for g, rows in enumerate(recent):
            for i, r in enumerate(list(reversed(rows))[: self.depth]):
                g_of.append(g)
                i_of.append(i)
                src.append(r)
        n_groups = len(recent)
        if not src:
            return Lists.empty(n_groups)
        g_of, i_of, src = np.array(g_of, np.int64), np.array(i_of, np.int64), np.array(src, np.int64)
        u_of = users[g_of]
        s, out, alive = self.source_state(u_of, src, own, taken)
        e = np.flatnonzero(alive)
        lengths = self.offsets[s[e] + 1] - self.offsets[s[e]]
        starts = np.cumsum(lengths) - lengths  # where each source's transitions start in the flat arrays
        idx = np.arange(int(lengths.sum())) + np.repeat(self.offsets[s[e]] - starts, lengths)
        dst = self.next_rows[idx]
        c = self.counts[idx]
        # take out the user's own pairs out of each source (few): found by the pair, not per transition
        k, own_dst, own_n = own.pairs_from(u_of[e], src[e])
        at = lookup(src[e][k] * self.base + own_dst, self.pair_keys, np.arange(self.pair_keys.size), default=-1)
        held = at >= 0
        flat = starts[k[held]] + at[held] - self.offsets[s[e][k[held]]]
        c[flat] = np.maximum(c[flat] - own_n[held], 0.0)  # (a pair left at 0 is gone from the channel)
        w = np.array(self.weights, np.float64)[i_of[e]] / np.where(out[e] > 0, out[e], np.inf)
        vals = np.repeat(w, lengths) * c
        keys = np.repeat(g_of[e] * self.base, lengths) + dst
        if self.decay > 0 and n_groups * self.base <= DENSE_LIMIT:
            return self._top_dense(keys, vals, n, accept, exclude, n_groups)
        keep = c > 0
        # each row's contributions added in the order the channel adds them (most recent source first)
        uniq, sums = _sum_in_order(keys[keep], vals[keep])
        return _top(uniq, sums, self.base, n, accept, exclude, n_groups)

    def _top_dense(self, keys: np.ndarray, vals: np.ndarray, n: int, accept: np.ndarray, exclude: KeySet,
                   n_groups: int) -> Lists:
        """:func:`_top` of the contributions ``vals`` to keys ``request * R + row``, summed in a
        ``(requests, rows)`` matrix in the order they come (request by request, most recent source
        first, as the channel adds them). With ``decay > 0`` every contribution of a pair the
        channel holds is positive, so a row is a candidate exactly when its sum is."""
        base = self.base
        scores = np.bincount(keys, weights=vals, minlength=n_groups * base).reshape(n_groups, base)
        ok = scores > 0
        ok[:, : accept.size] &= accept[None, :base]
        ok[:, accept.size :] = False
        if exclude.mask is not None and exclude.mask.size > n_groups * base:
            ok &= ~exclude.mask[: n_groups * base].reshape(n_groups, base)
        else:
            gg, rr = np.nonzero(ok)
            ok[gg, rr] = ~exclude.has(gg * base + rr)
        gg, rr = np.nonzero(ok)
        vv = scores[gg, rr]
        keep = _at_least_nth(gg, vv, n, n_groups)  # only rows as good as a request's n-th best are sorted
        gg, rr, vv = gg[keep], rr[keep], vv[keep]
        order = order_by(gg, -vv, rr)
        return Lists.from_sorted(gg[order], rr[order], vv[order].astype(np.float32), n_groups, n)

    def last_share(self, last: np.ndarray, users: np.ndarray, rows: np.ndarray, own: OwnSteps,
                   taken: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The ``last`` feature: for each candidate ``rows[k]`` of a request whose last positive row
        is ``last[k]`` (-1: none) and user ``users[k]``, its share of transitions out of ``last``."""
        out = np.zeros(rows.size, np.float32)
        has = last >= 0
        if not has.any():
            return out
        k = np.flatnonzero(has)
        s, total, alive = self.source_state(users[k], last[k], own, taken)
        ok = alive & (total != 0)
        k, total = k[ok], total[ok]
        at = lookup(last[k] * self.base + np.minimum(rows[k], self.base - 1), self.pair_keys,
                     np.arange(self.pair_keys.size, dtype=np.int64), default=-1)
        found = (at >= 0) & (rows[k] < self.base)
        c = np.zeros(k.size)
        c[found] = self.left(users[k][found], last[k][found], rows[k][found], at[found], own)
        out[k] = c / total
        return out


class PopularityTable:
    """A :class:`~recsieve.engine.recall.PopularityChannel`'s counts as an array, read with some users'
    own positive events taken out (as its ``forget`` would). ``accept``: the rows recall may propose
    (the catalog's live rows)."""

    def __init__(self, channel: PopularityChannel, n_rows: int, accept: np.ndarray) -> None:
        self.accept = accept
        st = channel.state()
        counts, self.total = st["counts"], float(st["total"][0])
        self.counts = np.zeros(max(n_rows, counts.size))
        self.counts[: counts.size] = counts
        rows = np.flatnonzero(accept[:n_rows])
        vals = self.counts[rows]
        self.order = rows[order_by(-vals, rows)]  # every accepted row, most counted first (ties: row)
        self.order_vals = self.counts[self.order]

    def left(self, users: np.ndarray, rows: np.ndarray, own: OwnSteps) -> np.ndarray:
        return np.maximum(self.counts[rows] - own.item_count(users, rows), 0.0)

    def totals(self, own: OwnSteps, n_users: int) -> np.ndarray:
        """Each user's total once their own events are taken out."""
        users, rows = own.item_keys // own.base, own.item_keys % own.base
        taken = np.minimum(self.counts[np.minimum(rows, self.counts.size - 1)] * (rows < self.counts.size),
                           own.item_counts)
        return self.total - np.bincount(users, weights=taken, minlength=n_users)

    def share(self, users: np.ndarray, rows: np.ndarray, own: OwnSteps, totals: np.ndarray) -> np.ndarray:
        """Each candidate's share of positive events (the ``popularity`` feature's input), float32."""
        total = totals[users]
        c = self.left(users, np.minimum(rows, self.counts.size - 1), own) * (rows < self.counts.size)
        return np.where(total != 0, c / np.where(total != 0, total, 1.0), 0.0).astype(np.float32)

    def recall(self, owned: Sequence[np.ndarray], users: np.ndarray, own: OwnSteps, n: int,
               exclude: KeySet, sizes: np.ndarray, positive_only: np.ndarray, base: int) -> Lists:
        """The channel's candidates for each request: ``owned[u]`` the user's own positive rows
        (unique), ``sizes[g]`` how many rows request ``g`` excludes, ``positive_only[g]``: only
        rows with a positive count (the request has a query or recent rows)."""
        n_groups = users.size
        # Rows the user never had keep their count: the global order, past the request's excluded ones.
        heads = np.minimum(n + sizes + np.array([owned[u].size for u in users], np.int64), self.order.size)
        g_a = np.repeat(np.arange(n_groups), heads)
        pos = np.arange(g_a.size) - np.repeat(np.cumsum(heads) - heads, heads)
        rows_a = self.order[pos]
        vals_a = self.order_vals[pos]
        own_keys = np.sort(np.concatenate([g * base + owned[u] for g, u in enumerate(users.tolist())] or
                                          [np.empty(0, np.int64)]))
        keys_a = g_a * base + rows_a
        keep = ~_member(keys_a, own_keys) & ~exclude.has(keys_a)
        first = _take_first(g_a, keep, n)
        # The user's own rows, counted without them.
        g_b = np.repeat(np.arange(n_groups), [owned[u].size for u in users])
        rows_b = np.concatenate([owned[u] for u in users]) if n_groups else np.empty(0, np.int64)
        rows_b = rows_b.astype(np.int64)
        ok = accepted(rows_b, self.accept) & ~exclude.has(g_b * base + rows_b)
        g_b, rows_b = g_b[ok], rows_b[ok]
        vals_b = self.left(users[g_b], rows_b, own)
        g = np.concatenate([g_a[first], g_b])
        rows = np.concatenate([rows_a[first], rows_b])
        vals = np.concatenate([vals_a[first], vals_b])
        order = order_by(g, -vals, rows)
        g, rows, scores = g[order], rows[order], vals[order].astype(np.float32)
        pos = np.arange(g.size) - np.searchsorted(g, g)
        keep = (pos < n) & (~positive_only[g] | (scores > 0))
        return Lists.from_sorted(g[keep], rows[keep], scores[keep], n_groups)


def _top(keys: np.ndarray, vals: np.ndarray, base: int, n: int, accept: np.ndarray, exclude: KeySet,
         n_groups: int) -> Lists:
    """Per request, the top ``n`` accepted, non-excluded rows by value (ties: lower row first), as a
    channel's ``_top_accepted`` chooses them; ``keys`` are ``g * base + row``."""
    g, rows = keys // base, keys % base
    ok = accept[np.minimum(rows, accept.size - 1)] & (rows < accept.size) & ~exclude.has(keys)
    g, rows, vals = g[ok], rows[ok], vals[ok]
    order = order_by(g, -vals, rows)
    g, rows, vals = g[order], rows[order], vals[order]
    return Lists.from_sorted(g, rows, vals.astype(np.float32), n_groups, n)


def fuse_many(lists: Sequence[Lists], weights: Sequence[float], n: int, base: int, k0: float = 60.0) -> Lists:
    """:func:`~recsieve.engine.recall.fuse` of each request's lists (the same rows, order and scores).

    Only entries scoring at least their request's ``n``-th best (ties kept) are sorted exactly."""
    n_groups = lists[0].n_groups if lists else 0
    parts = [(lst.groups() * base + lst.rows, lst.ranks(), w) for lst, w in zip(lists, weights)]
    if not parts or not sum(k.size for k, _, _ in parts):
        return Lists.empty(n_groups)
    _, uniq, inv = _grouped(np.concatenate([k for k, _, _ in parts]))
    fused, best = np.zeros(uniq.size), np.full(uniq.size, np.iinfo(np.int64).max)
    start = 0
    for keys, ranks, w in parts:  # channel by channel, as fuse adds them (a row once per list)
        at = inv[start : start + keys.size]
        start += keys.size
        fused[at] += w / (k0 + ranks)
        best[at] = np.minimum(best[at], ranks)
    g, rows = uniq // base, uniq % base
    keep = _at_least_nth(g, fused, n, n_groups)
    g, rows, fused, best = g[keep], rows[keep], fused[keep], best[keep]
    order = order_by(g, -fused, best, rows)
    return Lists.from_sorted(g[order], rows[order], fused[order].astype(np.float32), n_groups, n)


def _at_least_nth(groups: np.ndarray, values: np.ndarray, n: int, n_groups: int) -> np.ndarray:
    """Which entries (sorted by group) are at least their group's ``n``-th largest value (all of
    a group with ``n`` or fewer): a superset of each group's top ``n`` whatever breaks its ties."""
    starts = np.searchsorted(groups, np.arange(n_groups + 1))
    sizes = np.diff(starts)
    big = np.flatnonzero(sizes > n)  # the groups to cut: a row each of negated values, padded with +inf
    if n <= 0 or not big.size:
        return np.ones(groups.size, bool)
    row = np.full(n_groups, -1)
    row[big] = np.arange(big.size)
    at = np.flatnonzero(row[groups] >= 0)
    width = int(sizes[big].max())
    padded = np.full(big.size * width, np.inf)
    padded[row[groups[at]] * width + at - starts[groups[at]]] = -values[at]
    padded = padded.reshape(big.size, width)
    floor = np.full(n_groups, -np.inf)
    floor[big] = -np.partition(padded, n - 1, axis=1)[:, n - 1]
    return values >= floor[groups]


def accepted(rows: np.ndarray, accept: np.ndarray) -> np.ndarray:
    """Whether recall's accept check lets each row through (``accept``: a mask of rows)."""
    return accept[np.clip(rows, 0, accept.size - 1)] & (rows < accept.size)
