"""``FaissIndex``: the :class:`~recsieve.indexes.base.VectorIndex` protocol on FAISS.

One scheme for every kind (flat, HNSW, IVF): FAISS holds vectors at dense internal
*positions* ``0..P-1``, appended in order. Beside it live ``pos_ids`` (position -> item id),
an ``alive`` bitmap over positions, the id -> position map, and the metadata in columns over
the same positions (together a :class:`~recsieve.indexes.faiss_state.FaissState`). Upserting an
existing id tombstones its old position and appends; removing tombstones. Searches pass one
``IDSelectorBitmap`` (alive, matching the filter, not excluded) through per-call
``SearchParameters``, so every returned item qualifies and no post-filtering shortfall occurs.

Why one scheme rather than ``IndexIDMap2.remove_ids`` for flat/IVF: HNSW cannot remove, so it
needs tombstones anyway; with one position space for all kinds, filters, exclusions and removals
share a single bitmap and one tested code path, an upsert is an O(1) append, and FAISS's own
``remove_ids`` is O(n) per call on flat indexes anyway.

**Compaction, off the write lock.** When the dead fraction of positions passes ``compact_at``
(or an IVF with an automatic ``nlist`` has grown 8-fold since its training), a write starts a
compaction in a background thread: under the lock it only notes which positions are live and
copies their ids and metadata; the new FAISS index (HNSW graph, IVF re-trained) is then built
from the vectors FAISS already stores, read in chunks under the *read* lock, while searches and
writes go on against the current index. Writes made meanwhile are recorded and applied to the new
index — most of them before, the last few under the write lock — and the new state replaces the
old in one assignment under that lock. One compaction runs at a time; one that fails is logged
and the current index keeps serving (automatic retries wait until as many items have been
written again as ``compact_at`` of the index). :meth:`FaissIndex.compact` does the same in the
caller's thread; :meth:`FaissIndex.close` cancels a background compaction and waits for any to
end; :meth:`FaissIndex.save` writes the serving state (a consistent one: with its tombstones),
never a half-built one.

IVF needs training: until ``train_min`` live items exist an ``ivf`` index keeps them in an
exact ``IndexFlatIP`` (exact search); the write that reaches ``train_min`` trains the IVF on
all live vectors (``nlist`` defaults to ``4 * sqrt(n)``, at most ``n / 39``) in the writer's
thread before it returns — off the lock, so other threads' searches and writes go on against the
exact index meanwhile. With an automatic ``nlist`` it retrains (in the background, as above)
whenever the live count has grown 8-fold since the last training.

A search whose allowed set is small (``<= exact_below`` items), or where HNSW/IVF came back
short of ``k`` (a very selective filter), is answered exactly over the allowed set.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsieve.errors import (
    CorruptStoreError,
    InvalidInputError,
    StoreError,
)
from recsieve.filters import Filter
from recsieve.indexes.base import Metadata, SearchParams, VectorIndex
from recsieve.indexes.checks import (
    META_FILE,
    check_ids,
    check_positive,
    check_search,
    check_upsert,
    clean_metadata,
    read_index_meta,
)
from recsieve.indexes.faiss_state import (
    FORMAT,
    INDEX_FILE,
    VERSION,
    FaissState,
    Snapshot,
    read_state,
    write_state,
)
from recsieve.indexes.rebuild import LogEntry, OffLockRebuilds
from recsieve.locks import RWLock
from recsieve.storage import atomic_write_bytes, atomic_write_json

__all__ = ["FaissIndex", "FAISS_KINDS"]

#: The index kinds :class:`FaissIndex` builds.
FAISS_KINDS = ("flat", "hnsw", "ivf")


class FaissIndex(OffLockRebuilds, VectorIndex):
    """Inner-product vector index on FAISS with removal, metadata filters and persistence.

    ``kind``: ``"flat"`` (exact), ``"hnsw"`` (``IndexHNSWFlat``: ``hnsw_m``,
    ``ef_construction``, default ``ef_search``) or ``"ivf"`` (``IndexIVFFlat``: ``nlist``,
    default ``nprobe``; exact until ``train_min`` items). ``compact_at``: dead fraction of
    positions that triggers a compaction; ``exact_below``: allowed-set size under which filtered
    searches are exact. ``compact_threads``: OpenMP threads of a background compaction (default
    half the CPUs, at least one, so requests keep the rest; not saved with the index).
    Thread-safe: searches share a lock, writes take it exclusively; compactions run off it (see
    the module docstring; :class:`~recsieve.indexes.rebuild.OffLockRebuilds` runs them).
    """

    _thread_name = "recsieve-faiss-compaction"

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int = 16,
        train_min: int = 1024,
        compact_at: float = 0.25,
        exact_below: int = 2048,
        compact_threads: int | None = None,
    ) -> None:
        self.dim = check_positive("dim", dim)
        if kind not in FAISS_KINDS:
            raise InvalidInputError("kind", kind, f"must be one of {', '.join(FAISS_KINDS)}")
        self.kind = kind
        self.hnsw_m = check_positive("hnsw_m", hnsw_m)
        self.ef_construction = check_positive("ef_construction", ef_construction)
        self.ef_search = check_positive("ef_search", ef_search)
        self.nlist = check_positive("nlist", nlist, allow_none=True)
        self.nprobe = check_positive("nprobe", nprobe)
        self.train_min = check_positive("train_min", train_min)
        if not 0.0 < float(compact_at) <= 1.0:
            raise InvalidInputError("compact_at", compact_at, "must be in (0, 1]")
        self.compact_at = float(compact_at)
        self.exact_below = check_positive("exact_below", exact_below)
        self.compact_threads = check_positive("compact_threads", compact_threads, allow_none=True) or max(
            1, (os.cpu_count() or 2) // 2
        )
        self._lock = RWLock()
        self._state = FaissState.empty(self._new_index(0))
        # compaction: held while one runs; the writes made meanwhile (None: none runs)
        self._init_rebuilds()

    # ------------------------------------------------------------------ building

    def _new_index(self, n: int) -> faiss.Index:
        """An empty FAISS index for ``n`` live vectors (IVF below ``train_min``: exact flat)."""
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
            return index
        if self.kind == "ivf" and n >= self.train_min:
            auto = max(1, min(int(4 * math.sqrt(n)), n // 39))
            nlist = min(self.nlist, n) if self.nlist else auto
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.nprobe = min(self.nprobe, nlist)
            return index
        return faiss.IndexFlatIP(self.dim)

    def _needs_rebuild(self, state: FaissState) -> str | None:
        """Why ``state`` should be rebuilt: ``"train"`` (an untrained IVF reached ``train_min``),
        ``"compact"`` (dead fraction), ``"retrain"`` (automatic ``nlist``, 8-fold growth), or None."""
        live = len(state.pos_of)
        if self.kind == "ivf" and not state.trained_at and live >= self.train_min:
            return "train"
        dead = len(state.alive) - live
        if dead and dead >= self.compact_at * len(state.alive):
            return "compact"
        if self.kind == "ivf" and state.trained_at and self.nlist is None and live >= 8 * state.trained_at:
            return "retrain"
        return None

    def _build(self, snap: Snapshot, cancel: threading.Event) -> FaissState:
        """A new state holding the snapshot's live items: a fresh FAISS index (an IVF trained
        anew) filled from the current index's stored vectors, read under the read lock."""
        index = self._new_index(len(snap.keep))
        return snap.build(index, self._lock, cancel)

    def _after_write(self, state: FaissState) -> bool:
        """Called by a writer holding the write lock: start a background compaction when one is
        due; return True when the writer must train the IVF itself (after releasing the lock)."""
        why = self._needs_rebuild(state)
        if why is None:
            return False
        if why == "train":
            return True
        if self._written >= self._retry_at:
            self._start_background()
        return False

    # the hooks of OffLockRebuilds

    def _begin(self) -> Snapshot:
        """Snapshot the serving state (its live positions, a copy of its metadata)."""
        return Snapshot(self._state, copy.deepcopy(self._state.meta))

    def _replay(self, new: FaissState, entries: Sequence[LogEntry]) -> None:
        new.replay(entries)

    def _swap(self, new: FaissState) -> FaissState:
        old, self._state = self._state, new
        return old

    def _describe(self, snap: Snapshot) -> str:
        return f"FAISS {self.kind} rebuild of {len(snap.keep)} items"

    def _retry_after(self, snap: Snapshot) -> int:
        return max(64, int(self.compact_at * len(snap.state.alive)))

    def _due_here(self) -> bool:
        """The IVF reached ``train_min``: the writer trains it before returning (off the lock)."""
        return self._needs_rebuild(self._state) == "train"

    def _in_background_thread(self) -> None:
        faiss.omp_set_num_threads(self.compact_threads)  # this thread's own OpenMP setting

    # ------------------------------------------------------------------ writes

    def upsert(
        self,
        ids: np.ndarray | Sequence[int],
        vectors: np.ndarray,
        metadata: Sequence[Metadata] | None = None,
    ) -> None:
        """Insert or replace ``ids`` with ``vectors`` and ``metadata`` (see :class:`VectorIndex`)."""
        arr, vecs = check_upsert(ids, vectors, self.dim)
        if not len(arr):
            return
        with self._lock.write():
            state = self._state
            rows, new_fields = clean_metadata(metadata, len(arr), state.meta.schema)
            state.add(arr, vecs, rows, new_fields)
            self._record(LogEntry(arr.copy(), vecs.copy(), rows, new_fields))
            self._written += len(arr)
            train = self._after_write(state)
        if train:
            self._rebuild_here()

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored); return how many were removed."""
        arr = check_ids(ids, "ids")
        with self._lock.write():
            state = self._state
            gone = state.drop(arr)
            if gone:
                self._record(LogEntry(arr.copy(), None, None, None))
                self._written += gone
                self._after_write(state)  # never "train": removing does not add live items
        return gone

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self._state.pos_of)

    def __contains__(self, item_id: object) -> bool:
        if isinstance(item_id, (bool, np.bool_)) or not isinstance(item_id, (int, np.integer)):
            return False
        return int(item_id) in self._state.pos_of

    @property
    def trained(self) -> bool:
        """Whether the ANN structure is in use (always true for flat and HNSW)."""
        return self.kind != "ivf" or isinstance(self._state.index, faiss.IndexIVF)

    @property
    def positions(self) -> int:
        """Positions FAISS holds now, live and tombstoned (a compaction drops the tombstones)."""
        return len(self._state.pos_ids)

    def metadata(self, item_id: int) -> dict[str, Any]:
        """The filterable metadata stored for ``item_id`` (``KeyError`` if absent)."""
        with self._lock.read():
            state = self._state
            return state.meta.row(state.pos_of[int(item_id)])

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filter: Filter | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query among live items matching ``filter``, not in ``exclude``."""
        q, k, excl = check_search(queries, k, filter, exclude, self.dim)
        params = params or SearchParams()
        ef = check_positive("params.ef_search", params.ef_search, allow_none=True) or self.ef_search
        nprobe = check_positive("params.nprobe", params.nprobe, allow_none=True) or self.nprobe
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        with self._lock.read():
            state = self._state
            drop = [state.pos_of[i] for i in excl.tolist() if i in state.pos_of]
            if filter is None and not drop:  # the common case: no per-call mask to build
                allowed, n_allowed = state.alive, len(state.pos_of)
            else:
                allowed = state.alive.copy()
                if filter is not None:
                    allowed &= state.meta.evaluate(filter)
                allowed[drop] = False
                n_allowed = int(allowed.sum())
            kk = min(k, n_allowed)
            if kk == 0 or q.shape[0] == 0:
                return scores, ids
            sel, bitmap = None, None
            if n_allowed < len(allowed):
                bitmap = np.packbits(allowed, bitorder="little")
                sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
            index = state.index
            exact = isinstance(index, faiss.IndexFlat) or n_allowed <= self.exact_below
            if exact:
                dist, pos = _exact_search(index, q, kk, sel)
            else:
                if isinstance(index, faiss.IndexHNSW):
                    sp = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, kk))
                else:
                    sp = faiss.SearchParametersIVF(sel=sel, nprobe=min(nprobe, index.nlist))
                dist, pos = index.search(q, kk, params=sp)
                # a selective filter can starve the ANN search: answer short rows exactly
                short = np.flatnonzero((pos < 0).any(axis=1))
                if len(short):
                    dist[short], pos[short] = _exact_search(index, q[short], kk, sel)
            found = pos >= 0
            ids[:, :kk] = np.where(found, state.pos_ids[np.where(found, pos, 0)], -1)
            scores[:, :kk] = np.where(found, dist, -np.inf)
            del bitmap  # the selector reads it until here
        return scores, ids

    # ------------------------------------------------------------------ persistence

    def _settings(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "kind": self.kind,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "train_min": self.train_min,
            "compact_at": self.compact_at,
            "exact_below": self.exact_below,
        }

    def save(self, directory: Path) -> None:
        """Write ``index.faiss``, ``state.npz`` (id maps, metadata columns) and ``meta.json``:
        the serving state (a compaction in flight is not waited for; its result is in a later save)."""
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StoreError(f"index directory {directory} must be an empty folder")
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            blob, meta = write_state(self._state, self._settings(), directory)
        atomic_write_bytes(directory / INDEX_FILE, blob)
        atomic_write_json(directory / META_FILE, meta)

    @classmethod
    def load(cls, directory: Path) -> FaissIndex:
        """Read an index written by :meth:`save`; a damaged folder raises :class:`CorruptStoreError`."""
        directory = Path(directory)
        meta = read_index_meta(directory, FORMAT, VERSION, "FAISS")
        try:
            self = cls(**dict(meta["settings"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"{directory / META_FILE}: bad or missing entry ({exc})") from None
        self._state = read_state(directory, meta, self.dim)
        return self

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, kind={self.kind!r}, live={len(self)}, positions={self.positions})"


def _exact_search(index: faiss.Index, q: np.ndarray, k: int, sel: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search over the selected positions of ``index``."""
    if isinstance(index, faiss.IndexHNSW):
        return faiss.downcast_index(index.storage).search(
            q, k, params=faiss.SearchParameters(sel=sel)
        )
    if isinstance(index, faiss.IndexIVF):
        return index.search(q, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=index.nlist))
    return index.search(q, k, params=faiss.SearchParameters(sel=sel))
