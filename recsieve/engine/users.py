"""``UserStore``: per user, a recent-events window and a time-decayed long-term profile.

The profile is a kind-weighted, exponentially time-decayed sum of item embeddings,
updated in O(dim) per event: with half-life ``h``, an event at time ``t`` of weight ``w``
turns ``(S, W, t0)`` into ``(S * d + w * v, W * d + |w|, t)`` where ``d = 0.5 ** ((t - t0) / h)``
(an event older than ``t0`` is decayed itself instead). The profile direction is ``S / W``.
"""

from __future__ import annotations

import json
import math
import threading
import zipfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse

from recsieve.errors import CorruptStoreError
from recsieve.storage import pack_strings, unpack_strings
from recsieve.types import EVENT_KINDS

__all__ = ["UserStore", "UserView", "RecentEvent"]

_DAY = 86400.0
#: The user store's snapshot file (columns; ``users.jsonl`` + ``profiles.npy`` before it).
_COLUMNS = "users.npz"


class RecentEvent(NamedTuple):
    """One entry of a user's recent window (a named tuple: an open builds millions)."""

    row: int
    kind: str
    ts: float
    weight: float
    text: str | None = None


@dataclass(frozen=True)
class UserView:
    """A consistent snapshot of one user, safe to read without the store's lock.

    ``profile`` is the decayed weighted sum (not normalised; ``None`` when the user's weights
    cancel out), ``recent`` is most-recent-last, ``consumed`` the rows the user interacted with.
    ``version`` counts the events applied, so caches can key on it. ``history`` is the longer
    window the context encoder reads (most-recent-last; ``recent`` is its tail).
    """

    user_id: str
    profile: np.ndarray | None
    recent: tuple[RecentEvent, ...]
    consumed: frozenset[int]
    version: int
    last_ts: float
    history: tuple[RecentEvent, ...] = ()


class _State:
    """One user's state. The recent window and consumed rows may wait in ``_later``: (source, i)
    pairs, each source holding the events of many users as columns (a loaded snapshot, a batch
    of replayed events) and able to build user ``i``'s part; they are built, in order, when the
    user is first touched -- so an open builds no object per event of users nobody asks for."""

    __slots__ = ("profile", "weight", "last_ts", "version", "_recent", "_consumed", "_later")

    def __init__(self, dim: int, window: int) -> None:
        self.profile = np.zeros(dim, dtype=np.float64)
        self.weight = 0.0
        self.last_ts = -math.inf
        self.version = 0
        self._recent: deque[RecentEvent] = deque(maxlen=window)
        self._consumed: set[int] = set()
        self._later: list[tuple[Any, int]] = []

    def _settle(self) -> None:
        later, self._later = self._later, []
        for source, i in later:
            self._recent.extend(source.recent(i))
            self._consumed.update(source.consumed(i))

    @property
    def recent(self) -> deque[RecentEvent]:
        if self._later:
            self._settle()
        return self._recent

    @property
    def consumed(self) -> set[int]:
        if self._later:
            self._settle()
        return self._consumed


class _Replayed:
    """A batch of replayed events as columns, grouped by user: group ``g``'s consumed rows
    (``rows[bounds[g]:bounds[g + 1]]``) and the last ``window`` of its events, the only ones its
    window can keep (``kept_*[kept_bounds[g]:kept_bounds[g + 1]]``)."""

    def __init__(self, rows: np.ndarray, bounds: list[int], kept_bounds: list[int], kept_rows: np.ndarray,
                 kept_kinds: list[str], kept_ts: np.ndarray, kept_weights: np.ndarray,
                 kept_texts: list[str | None]) -> None:
        self.rows, self.bounds, self.kept_bounds = rows, bounds, kept_bounds
        self.kept_rows, self.kinds, self.ts, self.weights, self.texts = (kept_rows, kept_kinds, kept_ts,
                                                                         kept_weights, kept_texts)

    def consumed(self, g: int) -> list[int]:
        return self.rows[self.bounds[g]: self.bounds[g + 1]].tolist()

    def recent(self, g: int) -> list[RecentEvent]:
        lo, hi = self.kept_bounds[g], self.kept_bounds[g + 1]
        return list(map(RecentEvent, self.kept_rows[lo:hi].tolist(), self.kinds[lo:hi], self.ts[lo:hi].tolist(),
                        self.weights[lo:hi].tolist(), self.texts[lo:hi]))


class _Saved:
    """The recent windows and consumed rows of a loaded ``users.npz``, as its columns."""

    def __init__(self, a: Mapping[str, np.ndarray], kinds: list[str], n_users: int) -> None:
        self.kinds = kinds
        self.c_off, self.r_off = a["consumed_offsets"].tolist(), a["recent_offsets"].tolist()
        self.rows, self.kind, self.ts = a["recent_row"], a["recent_kind"], a["recent_ts"]
        self.weight, self.has_text, self.consumed_rows = a["recent_weight"], a["recent_has_text"], a["consumed"]
        self.text = a["recent_text"].tobytes()
        self.text_off = a["recent_text_offsets"].tolist()
        n_events = self.rows.shape[0]
        if (len(self.c_off) != n_users + 1 or len(self.r_off) != n_users + 1
                or self.c_off[-1] != self.consumed_rows.shape[0] or self.r_off[-1] != n_events
                or any(a[k].shape != (n_events,) for k in ("recent_kind", "recent_ts", "recent_weight", "recent_has_text"))
                or len(self.text_off) != n_events + 1 or self.text_off[-1] != len(self.text)):
            raise ValueError("offsets do not match the users")
        if n_events and not 0 <= int(self.kind.min()) <= int(self.kind.max()) < len(kinds):
            raise ValueError("an event kind code outside the saved kinds")

    def consumed(self, i: int) -> set[int]:
        return set(self.consumed_rows[self.c_off[i]: self.c_off[i + 1]].tolist())

    def recent(self, i: int) -> list[RecentEvent]:
        lo, hi = self.r_off[i], self.r_off[i + 1]
        texts = [self.text[a:b].decode("utf-8", "surrogatepass") if h else None for a, b, h in
                 zip(self.text_off[lo:hi], self.text_off[lo + 1: hi + 1], self.has_text[lo:hi].tolist())]
        return [RecentEvent(r, self.kinds[k], t, w, x) for r, k, t, w, x in zip(
            self.rows[lo:hi].tolist(), self.kind[lo:hi].tolist(), self.ts[lo:hi].tolist(),
            self.weight[lo:hi].tolist(), texts)]


class UserStore:
    """In-memory user state, fed by the engine after each event is journaled."""

    def __init__(
        self,
        dim: int,
        *,
        recent_window: int = 20,
        history_window: int = 0,
        half_life_days: float = 30.0,
        kind_weights: Mapping[str, float] = EVENT_KINDS,
    ) -> None:
        self.dim = dim
        self.recent_window = recent_window
        #: events kept per user: the recent window, or the (longer) history the context encoder reads
        self.window = max(recent_window, history_window)
        self.half_life = half_life_days * _DAY
        self.kind_weights = dict(kind_weights)
        self._users: dict[str, _State] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def event_weight(self, kind: str, weight: float | None) -> float:
        """The profile weight of an event: its own ``weight`` if given, else its kind's default.

        For ``rating`` a given weight is the rating on a 1-5 scale, centred at 3 (below 3 pushes away).
        """
        if weight is None:
            return self.kind_weights[kind]
        if kind == "rating":
            return (float(weight) - 3.0) / 2.0
        return float(weight)

    def event_weights(self, kinds: Sequence[str], weights: np.ndarray) -> np.ndarray:
        """:meth:`event_weight` of many events at once (float64; a NaN weight: none given)."""
        names = list(self.kind_weights)
        code = {k: i for i, k in enumerate(names)}
        codes = np.fromiter(map(code.get, kinds, repeat(-1, len(kinds))), dtype=np.int64, count=len(kinds))
        out = np.array(weights, dtype=np.float64)
        given = ~np.isnan(out)
        rating = given & (codes == code.get("rating", -2))
        out[rating] = (out[rating] - 3.0) / 2.0
        default = ~given
        if np.any(codes[default] < 0):
            raise KeyError(kinds[int(np.flatnonzero(default & (codes < 0))[0])])
        out[default] = np.array([self.kind_weights[k] for k in names], dtype=np.float64)[codes[default]]
        return out

    def apply(
        self, user_id: str, row: int, vector: np.ndarray, kind: str, ts: float, weight: float | None, text: str | None
    ) -> None:
        """Apply one event (already journaled) in O(dim)."""
        w = self.event_weight(kind, weight)
        with self._lock:
            st = self._users.get(user_id)
            if st is None:
                st = self._users[user_id] = _State(self.dim, self.window)
            if ts >= st.last_ts:
                d = 0.0 if st.last_ts == -math.inf else 0.5 ** ((ts - st.last_ts) / self.half_life)
                st.profile *= d
                st.profile += w * vector
                st.weight = st.weight * d + abs(w)
                st.last_ts = ts
            else:
                d = 0.5 ** ((st.last_ts - ts) / self.half_life)
                st.profile += (w * d) * vector
                st.weight += abs(w) * d
            st.recent.append(RecentEvent(row, kind, ts, w, text))
            st.consumed.add(row)
            st.version += 1

    def apply_columns(self, users: Sequence[str], rows: np.ndarray, kinds: Sequence[str], ts: np.ndarray,
                      weights: np.ndarray, texts: Sequence[str | None], table: np.ndarray,
                      *, table_rows: np.ndarray | None = None) -> None:
        """Apply journaled events given as columns, in journal order: ``rows`` their catalog
        rows, ``weights`` their profile weights (:meth:`event_weights`); event ``i``'s item vector
        is ``table[table_rows[i]]`` (``table_rows`` defaults to ``rows``: ``table`` is the
        catalog's vectors). The state :meth:`apply` would reach one event at a time, with no
        Python work per event but for each user's last ``window`` events.

        :meth:`apply`'s rule in closed form: after any order of events, a user's profile is
        ``sum_j w_j v_j 0.5^((L - ts_j) / half_life)`` and their weight the same sum of ``|w_j|``,
        where ``L`` is the newest timestamp seen (``last_ts``); so the profile of the events before
        is decayed to the new ``L`` once and the new ones are added with their own decays.
        """
        n = len(users)
        if not n:
            return
        index = {u: i for i, u in enumerate(dict.fromkeys(users))}  # codes in order of first appearance
        ids = list(index)
        code = np.fromiter(map(index.__getitem__, users), np.int64, n)
        order = np.argsort(code, kind="stable")
        counts = np.bincount(code, minlength=len(ids))
        bounds = np.r_[0, np.cumsum(counts)]  # group g (user ids[g]) is order[bounds[g]:bounds[g + 1]]
        starts = bounds[:-1]
        ts_sorted, w_sorted = ts[order], weights[order]
        newest = np.maximum.reduceat(ts_sorted, starts)
        table_rows = rows if table_rows is None else table_rows
        kept = order[np.arange(n) >= np.repeat(bounds[1:] - self.window, counts)]  # each user's last `window`
        bounds_list, kept_list = bounds.tolist(), kept.tolist()
        same = {k: k for k in dict.fromkeys(kinds)}  # one string object per kind, not one per event
        batch = _Replayed(rows[order], bounds_list, np.r_[0, np.cumsum(np.minimum(counts, self.window))].tolist(),
                          rows[kept], [same[kinds[i]] for i in kept_list], ts[kept], weights[kept],
                          [texts[i] for i in kept_list])
        with self._lock:
            states = [self._users.get(uid) for uid in ids]
            last = np.fromiter((-math.inf if st is None else st.last_ts for st in states), np.float64, len(ids))
            top = np.maximum(last, newest)  # each user's newest time after these events
            decay = np.exp2(-(np.repeat(top, counts) - ts_sorted) / self.half_life)
            sums = _group_sums(w_sorted * decay, table, table_rows[order], counts)
            masses = np.add.reduceat(np.abs(w_sorted) * decay, starts)
            known = np.isfinite(last)  # a user's earlier events, decayed to the new newest time
            old = np.zeros_like(top)
            old[known] = np.exp2(-(top[known] - last[known]) / self.half_life)
            old_list, masses_list, top_list = old.tolist(), masses.tolist(), top.tolist()
            for g, st in enumerate(states):
                if st is None:
                    st = self._users[ids[g]] = _State(self.dim, self.window)
                st.profile = st.profile * old_list[g] + sums[g]
                st.weight = st.weight * old_list[g] + masses_list[g]
                st.last_ts = top_list[g]
                st._later.append((batch, g))  # window and consumed rows: built when the user is touched
                st.version += bounds_list[g + 1] - bounds_list[g]

    def get(self, user_id: str) -> UserView | None:
        """A snapshot of ``user_id``, or ``None`` for an unknown (cold) user."""
        with self._lock:
            st = self._users.get(user_id)
            if st is None:
                return None
            profile = None
            if st.weight > 0 and np.linalg.norm(st.profile) > 1e-9 * st.weight:
                profile = (st.profile / st.weight).astype(np.float32)
            history = tuple(st.recent)
            recent = history[-self.recent_window:]
            return UserView(user_id, profile, recent, frozenset(st.consumed), st.version, st.last_ts, history)

    def version(self, user_id: str) -> int:
        """How many events ``user_id`` has (0 for a cold user)."""
        st = self._users.get(user_id)
        return 0 if st is None else st.version

    # -- persistence -------------------------------------------------------------------

    def save(self, folder: Path, *, format: str = "npz") -> None:
        """Write ``users.npz`` into ``folder``: every user's state as columns (see :meth:`load`);
        with ``format="jsonl"``, ``users.jsonl`` + ``profiles.npy`` (the format before columns)."""
        if format == "jsonl":
            self._save_jsonl(folder)
            return
        if format != "npz":
            raise ValueError(f"format: expected 'npz' or 'jsonl', got {format!r}")
        with self._lock:
            ids = list(self._users)
            states = [self._users[u] for u in ids]
            profiles = np.zeros((len(ids), self.dim), dtype=np.float64)
            for i, st in enumerate(states):
                profiles[i] = st.profile
            consumed = [sorted(st.consumed) for st in states]
            recent = [list(st.recent) for st in states]
            weight = np.fromiter((st.weight for st in states), dtype=np.float64, count=len(states))
            last_ts = np.fromiter((st.last_ts for st in states), dtype=np.float64, count=len(states))
            version = np.fromiter((st.version for st in states), dtype=np.int64, count=len(states))
        events = [e for window in recent for e in window]
        kinds = sorted({e.kind for e in events})
        code = {k: i for i, k in enumerate(kinds)}
        arrays: dict[str, np.ndarray] = {"profiles": profiles, "weight": weight, "last_ts": last_ts, "version": version}
        arrays["ids"], arrays["ids_offsets"] = pack_strings(ids)
        arrays["consumed"] = np.fromiter((r for rows in consumed for r in rows), dtype=np.int64)
        arrays["consumed_offsets"] = _offsets(consumed)
        arrays["recent_offsets"] = _offsets(recent)
        arrays["recent_row"] = np.fromiter((e.row for e in events), dtype=np.int64, count=len(events))
        arrays["recent_kind"] = np.fromiter((code[e.kind] for e in events), dtype=np.int16, count=len(events))
        arrays["recent_ts"] = np.fromiter((e.ts for e in events), dtype=np.float64, count=len(events))
        arrays["recent_weight"] = np.fromiter((e.weight for e in events), dtype=np.float64, count=len(events))
        arrays["recent_has_text"] = np.fromiter((e.text is not None for e in events), dtype=bool, count=len(events))
        arrays["recent_text"], arrays["recent_text_offsets"] = pack_strings([e.text or "" for e in events])
        arrays["kinds"], arrays["kinds_offsets"] = pack_strings(kinds)
        np.savez(folder / _COLUMNS, **arrays)

    def load(self, folder: Path) -> None:
        """Replace the store's content with what :meth:`save` wrote (``users.npz``), or with a
        store saved as ``users.jsonl`` + ``profiles.npy`` (the format before columns)."""
        if not (folder / _COLUMNS).is_file():
            self._load_jsonl(folder)
            return
        path = folder / _COLUMNS
        try:
            with np.load(path, allow_pickle=False) as npz:
                a = {key: npz[key] for key in npz.files}
            ids = unpack_strings(a["ids"], a["ids_offsets"])
            kinds = unpack_strings(a["kinds"], a["kinds_offsets"])
            n, profiles = len(ids), a["profiles"].astype(np.float64, copy=False)
            if profiles.shape != (n, self.dim) or any(a[k].shape != (n,) for k in ("weight", "last_ts", "version")):
                raise ValueError(f"{n} users but profiles {profiles.shape}, expected dimension {self.dim}")
            weight, last_ts, version = a["weight"].tolist(), a["last_ts"].tolist(), a["version"].tolist()
            saved = _Saved(a, kinds, n)
            saved.text.decode("utf-8", "surrogatepass")  # one check of every text, decoded per user when read
        except (OSError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise CorruptStoreError(f"user store {path}: unreadable ({exc!r})") from None
        users: dict[str, _State] = {}
        for i, uid in enumerate(ids):
            st = users[uid] = _State(0, self.window)
            st.profile, st.weight, st.last_ts, st.version = profiles[i], weight[i], last_ts[i], version[i]
            st._later.append((saved, i))
        with self._lock:
            self._users = users

    def _save_jsonl(self, folder: Path) -> None:
        with self._lock:
            ids = list(self._users)
            profiles = np.zeros((len(ids), self.dim), dtype=np.float64)
            lines = []
            for i, uid in enumerate(ids):
                st = self._users[uid]
                profiles[i] = st.profile
                lines.append(json.dumps({
                    "user_id": uid, "weight": st.weight, "last_ts": st.last_ts if st.last_ts != -math.inf else None,
                    "version": st.version, "consumed": sorted(st.consumed),
                    "recent": [[e.row, e.kind, e.ts, e.weight, e.text] for e in st.recent],
                }))
        (folder / "users.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        np.save(folder / "profiles.npy", profiles, allow_pickle=False)

    def _load_jsonl(self, folder: Path) -> None:
        """A store saved as ``users.jsonl`` (one JSON object per user) and ``profiles.npy``."""
        try:
            profiles = np.load(folder / "profiles.npy", allow_pickle=False)
            lines = (folder / "users.jsonl").read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise CorruptStoreError(f"user store in {folder}: unreadable ({exc})") from None
        if profiles.shape != (len(lines), self.dim):
            raise CorruptStoreError(f"user store in {folder}: profiles shape {profiles.shape} does not match {len(lines)} users")
        users: dict[str, _State] = {}
        for i, line in enumerate(lines):
            try:
                d = json.loads(line)
                st = _State(self.dim, self.window)
                st.profile = profiles[i].astype(np.float64)
                st.weight = float(d["weight"])
                st.last_ts = -math.inf if d["last_ts"] is None else float(d["last_ts"])
                st.version = int(d["version"])
                st._consumed = set(d["consumed"])
                st.recent.extend(RecentEvent(int(r), k, float(t), float(w), x) for r, k, t, w, x in d["recent"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptStoreError(f"user store in {folder}: line {i + 1} malformed ({exc})") from None
            users[d["user_id"]] = st
        with self._lock:
            self._users = users


def _group_sums(coef: np.ndarray, table: np.ndarray, rows: np.ndarray, counts: np.ndarray,
                chunk: int = 1 << 16) -> np.ndarray:
    """``out[g] = sum_j coef[j] * table[rows[j]]`` over group ``g``'s events (contiguous, ``counts``
    per group), in float64: a sparse (groups x distinct rows) matrix times those rows' vectors,
    ``chunk`` events at a time (memory bounded by ``chunk`` rows, whatever the table's size)."""
    n, groups = len(rows), len(counts)
    out = np.zeros((groups, table.shape[1]), dtype=np.float64)
    group = np.repeat(np.arange(groups), counts)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        used, col = np.unique(rows[lo:hi], return_inverse=True)
        g0, g1 = int(group[lo]), int(group[hi - 1]) + 1
        weights = sparse.csr_matrix((coef[lo:hi], (group[lo:hi] - g0, col)), shape=(g1 - g0, len(used)))
        out[g0:g1] += weights @ np.asarray(table[used], dtype=np.float64)
    return out


def _offsets(groups: list[list]) -> np.ndarray:
    out = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum([len(g) for g in groups], out=out[1:])
    return out
