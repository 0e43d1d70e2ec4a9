"""``FaissIndex``: the :class:`~recsieve.indexes.base.VectorIndex` protocol on FAISS.

One scheme for every kind (flat, HNSW, IVF): FAISS holds vectors at dense internal
*positions* ``0..P-1``, appended in order. Beside it live ``pos_ids`` (position -> item id),
an ``alive`` bitmap over positions, the id -> position map, and the metadata in columns over
the same positions. Upserting an existing id tombstones its old position and appends; removing
tombstones. Searches pass one ``IDSelectorBitmap`` (alive, matching the filter, not excluded)
through per-call ``SearchParameters``, so every returned item qualifies and no post-filtering
shortfall occurs. When the dead fraction passes ``compact_at``, the index is rebuilt from the
vectors FAISS already stores (``reconstruct_n``).

Why one scheme rather than ``IndexIDMap2.remove_ids`` for flat/IVF: HNSW cannot remove, so it
needs tombstones anyway; with one position space for all kinds, filters, exclusions and removals
share a single bitmap and one tested code path, an upsert is an O(1) append, and FAISS's own
``remove_ids`` is O(n) per call on flat indexes anyway.

IVF needs training: until ``train_min`` live items exist an ``ivf`` index keeps them in an
exact ``IndexFlatIP`` (exact search); the first upsert reaching ``train_min`` trains the IVF on
all live vectors (``nlist`` defaults to ``4 * sqrt(n)``, at most ``n / 39``). With an automatic
``nlist`` it retrains whenever the live count has grown 8-fold since the last training.

A search whose allowed set is small (``<= exact_below`` items), or where HNSW/IVF came back
short of ``k`` (a very selective filter), is answered exactly over the allowed set.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
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
from recsieve.indexes.columns import ColumnStore
from recsieve.locks import RWLock
from recsieve.storage import atomic_write_bytes, atomic_write_json

__all__ = ["FaissIndex", "FAISS_KINDS"]

#: The index kinds :class:`FaissIndex` builds.
FAISS_KINDS = ("flat", "hnsw", "ivf")
_FORMAT = "recsieve-faiss-index"
_VERSION = 1
_INDEX_FILE = "index.faiss"
_STATE_FILE = "state.npz"
_MAGICS = (b"IxFI", b"IHNf", b"IwFl")  # IndexFlatIP, IndexHNSWFlat, IndexIVFFlat


class FaissIndex(VectorIndex):
    """Inner-product vector index on FAISS with removal, metadata filters and persistence.

    ``kind``: ``"flat"`` (exact), ``"hnsw"`` (``IndexHNSWFlat``: ``hnsw_m``,
    ``ef_construction``, default ``ef_search``) or ``"ivf"`` (``IndexIVFFlat``: ``nlist``,
    default ``nprobe``; exact until ``train_min`` items). ``compact_at``: dead fraction of
    positions that triggers a rebuild; ``exact_below``: allowed-set size under which filtered
    searches are exact. Thread-safe: searches share a lock, writes take it exclusively.
    """

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
        self._lock = RWLock()
        self._index: faiss.Index = self._new_index(0)
        self._trained_at = 0  # live count when the IVF was last trained (0: not trained)
        self._pos_ids = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._pos_of: dict[int, int] = {}
        self._meta = ColumnStore()

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

    def _rebuild(self) -> None:
        """Rebuild from live vectors only: drops tombstones, (re)trains an IVF. Caller holds the write lock."""
        keep = np.flatnonzero(self._alive)
        vectors = self._vectors(keep)
        index = self._new_index(len(keep))
        self._trained_at = 0
        if isinstance(index, faiss.IndexIVF):
            index.train(vectors)
            # an array direct map lets reconstruct_n read the vectors back for the next rebuild
            index.set_direct_map_type(faiss.DirectMap.Array)
            self._trained_at = len(keep)
        if len(keep):
            index.add(vectors)
        self._index = index
        self._pos_ids = self._pos_ids[keep]
        self._alive = np.ones(len(keep), dtype=bool)
        self._pos_of = {int(i): p for p, i in enumerate(self._pos_ids.tolist())}
        self._meta.take(keep)

    def _vectors(self, positions: np.ndarray) -> np.ndarray:
        if not len(positions):
            return np.zeros((0, self.dim), dtype=np.float32)
        everything = self._index.reconstruct_n(0, self._index.ntotal)
        return np.ascontiguousarray(everything[positions])

    def _needs_rebuild(self) -> bool:
        live = len(self._pos_of)
        dead = len(self._alive) - live
        if dead and dead >= self.compact_at * len(self._alive):
            return True
        if self.kind != "ivf":
            return False
        if not self._trained_at:
            return live >= self.train_min
        return self.nlist is None and live >= 8 * self._trained_at

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
            rows, new_fields = clean_metadata(metadata, len(arr), self._meta.schema)
            start = len(self._pos_ids)
            old = [self._pos_of[i] for i in arr.tolist() if i in self._pos_of]
            self._index.add(vecs)
            self._pos_ids = np.concatenate([self._pos_ids, arr])
            self._alive = np.concatenate([self._alive, np.ones(len(arr), dtype=bool)])
            self._alive[old] = False
            self._meta.append(rows, new_fields)
            for p, i in enumerate(arr.tolist(), start):
                self._pos_of[i] = p
            if self._needs_rebuild():
                self._rebuild()

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored); return how many were removed."""
        arr = check_ids(ids, "ids")
        with self._lock.write():
            gone = [self._pos_of.pop(i) for i in set(arr.tolist()) if i in self._pos_of]
            self._alive[gone] = False
            if gone and self._needs_rebuild():
                self._rebuild()
        return len(gone)

    def compact(self) -> None:
        """Rebuild now from live vectors (drops tombstones; retrains an IVF when it has enough items)."""
        with self._lock.write():
            self._rebuild()

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self._pos_of)

    def __contains__(self, item_id: object) -> bool:
        if isinstance(item_id, (bool, np.bool_)) or not isinstance(item_id, (int, np.integer)):
            return False
        return int(item_id) in self._pos_of

    @property
    def trained(self) -> bool:
        """Whether the ANN structure is in use (always true for flat and HNSW)."""
        return self.kind != "ivf" or isinstance(self._index, faiss.IndexIVF)

    def metadata(self, item_id: int) -> dict[str, Any]:
        """The filterable metadata stored for ``item_id`` (``KeyError`` if absent)."""
        with self._lock.read():
            return self._meta.row(self._pos_of[int(item_id)])

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
            drop = [self._pos_of[i] for i in excl.tolist() if i in self._pos_of]
            if filter is None and not drop:  # the common case: no per-call mask to build
                allowed, n_allowed = self._alive, len(self._pos_of)
            else:
                allowed = self._alive.copy()
                if filter is not None:
                    allowed &= self._meta.evaluate(filter)
                allowed[drop] = False
                n_allowed = int(allowed.sum())
            kk = min(k, n_allowed)
            if kk == 0 or q.shape[0] == 0:
                return scores, ids
            sel, bitmap = None, None
            if n_allowed < len(allowed):
                bitmap = np.packbits(allowed, bitorder="little")
                sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
            index = self._index
            exact = isinstance(index, faiss.IndexFlat) or n_allowed <= self.exact_below
            if exact:
                dist, pos = self._exact_search(q, kk, sel)
            else:
                if isinstance(index, faiss.IndexHNSW):
                    sp = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, kk))
                else:
                    sp = faiss.SearchParametersIVF(sel=sel, nprobe=min(nprobe, index.nlist))
                dist, pos = index.search(q, kk, params=sp)
                # a selective filter can starve the ANN search: answer short rows exactly
                short = np.flatnonzero((pos < 0).any(axis=1))
                if len(short):
                    dist[short], pos[short] = self._exact_search(q[short], kk, sel)
            found = pos >= 0
            ids[:, :kk] = np.where(found, self._pos_ids[np.where(found, pos, 0)], -1)
            scores[:, :kk] = np.where(found, dist, -np.inf)
            del bitmap  # the selector reads it until here
        return scores, ids

    def _exact_search(self, q: np.ndarray, k: int, sel: Any) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search over the selected positions."""
        index = self._index
        if isinstance(index, faiss.IndexHNSW):
            return faiss.downcast_index(index.storage).search(
                q, k, params=faiss.SearchParameters(sel=sel)
            )
        if isinstance(index, faiss.IndexIVF):
            return index.search(q, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=index.nlist))
        return index.search(q, k, params=faiss.SearchParameters(sel=sel))

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
        """Write ``index.faiss``, ``state.npz`` (id maps, metadata columns) and ``meta.json``."""
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StoreError(f"index directory {directory} must be an empty folder")
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            blob = faiss.serialize_index(self._index).tobytes()
            desc, arrays = self._meta.to_arrays()
            arrays = {"pos_ids": self._pos_ids, "alive": self._alive, **arrays}
            with open(directory / _STATE_FILE, "wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
            meta = {
                "format": _FORMAT,
                "version": _VERSION,
                "settings": self._settings(),
                "trained_at": self._trained_at,
                "positions": len(self._pos_ids),
                "live": len(self._pos_of),
                "metadata": desc,
                "index_bytes": len(blob),
                "index_sha256": hashlib.sha256(blob).hexdigest(),
            }
        atomic_write_bytes(directory / _INDEX_FILE, blob)
        atomic_write_json(directory / META_FILE, meta)

    @classmethod
    def load(cls, directory: Path) -> FaissIndex:
        """Read an index written by :meth:`save`; a damaged folder raises :class:`CorruptStoreError`."""
        directory = Path(directory)
        meta = read_index_meta(directory, _FORMAT, _VERSION, "FAISS")
        try:
            settings = dict(meta["settings"])
            self = cls(**settings)
            n_pos, n_live, trained_at = (
                int(meta["positions"]),
                int(meta["live"]),
                int(meta["trained_at"]),
            )
            expected_size, expected_sha = int(meta["index_bytes"]), str(meta["index_sha256"])
            desc = meta["metadata"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(
                f"{directory / META_FILE}: bad or missing entry ({exc})"
            ) from None
        try:
            blob = (directory / _INDEX_FILE).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{directory}: missing {_INDEX_FILE}") from None
        if (
            len(blob) != expected_size
            or hashlib.sha256(blob).hexdigest() != expected_sha
            or blob[:4] not in _MAGICS
        ):
            raise CorruptStoreError(
                f"{directory / _INDEX_FILE} is truncated or corrupted (size/checksum mismatch)"
            )
        try:
            with np.load(directory / _STATE_FILE, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            pos_ids, alive = arrays.pop("pos_ids"), arrays.pop("alive")
            store = ColumnStore.from_arrays(desc, arrays)
        except FileNotFoundError:
            raise StoreError(f"{directory}: missing {_STATE_FILE}") from None
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            raise CorruptStoreError(
                f"{directory / _STATE_FILE} is truncated or corrupted ({exc})"
            ) from None
        if (
            pos_ids.dtype != np.int64
            or alive.dtype != bool
            or pos_ids.shape != (n_pos,)
            or alive.shape != (n_pos,)
            or store.size != n_pos
            or int(alive.sum()) != n_live
            or (n_pos and pos_ids.min() < 0)
            or len(np.unique(pos_ids[alive])) != n_live
        ):
            raise CorruptStoreError(
                f"{directory / _STATE_FILE}: id maps are inconsistent with {META_FILE}"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as exc:
            raise CorruptStoreError(
                f"{directory / _INDEX_FILE} cannot be read by FAISS ({str(exc)[:200]})"
            ) from None
        if (
            index.d != self.dim
            or index.ntotal != n_pos
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise CorruptStoreError(
                f"{directory / _INDEX_FILE}: dimension/size/metric do not match {META_FILE}"
            )
        self._index = index
        self._trained_at = trained_at
        self._pos_ids = pos_ids
        self._alive = alive
        self._meta = store
        self._pos_of = {
            int(i): int(p)
            for p, i in zip(np.flatnonzero(alive).tolist(), pos_ids[alive].tolist(), strict=True)
        }
        return self

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, kind={self.kind!r}, live={len(self)}, positions={len(self._pos_ids)})"
