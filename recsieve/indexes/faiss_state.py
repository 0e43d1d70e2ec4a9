"""What a :class:`~recsieve.indexes.faiss_index.FaissIndex` serves from, and how a compaction
builds the next one.

:class:`FaissState` is one FAISS index with its maps over positions (position -> id, alive
bitmap, id -> position, metadata columns): searches read one, writes change it, and a compaction
replaces it whole. :class:`Snapshot` is the part of a state a compaction starts from (the live
positions, their ids, a copy of the metadata) and :meth:`Snapshot.build` fills a new FAISS index
from the vectors the old one stores, in chunks read under the index's read lock, so writers
wait at most for one chunk. :class:`LogEntry` records a write made while a compaction runs;
:meth:`FaissState.replay` applies such writes to the new state before it is swapped in.
:func:`write_state` and :func:`read_state` save a state into an index folder and read it back,
checking every file.
"""

from __future__ import annotations

import hashlib
import threading
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsieve.errors import CorruptStoreError, StoreError
from recsieve.indexes.checks import META_FILE
from recsieve.indexes.columns import ColumnStore
from recsieve.indexes.rebuild import Cancelled, LogEntry
from recsieve.locks import RWLock
from recsieve.storage import quick_hash_bytes, quick_hash_file

__all__ = ["Cancelled", "FaissState", "LogEntry", "Snapshot", "CHUNK", "FORMAT", "VERSION", "INDEX_FILE",
           "read_state", "write_state"]

#: The format marker and version in a saved index's ``meta.json``, and the FAISS index's file.
FORMAT = "recsieve-faiss-index"
VERSION = 1
INDEX_FILE = "index.faiss"
_STATE_FILE = "state.npz"
_MAGICS = (b"IxFI", b"IHNf", b"IwFl")  # IndexFlatIP, IndexHNSWFlat, IndexIVFFlat

#: Vectors read (under the read lock) or added to a new index at once during a compaction; a
#: cancelled one stops at the next chunk.
CHUNK = 2048
_POINTS_PER_CENTROID = 256  # FAISS k-means samples this many training points per list at most


class FaissState:
    """A FAISS index and its maps over positions: ``pos_ids`` (position -> id, never changed in
    place: appends make a new array), ``alive`` (bitmap), ``pos_of`` (live id -> position),
    ``meta`` (metadata columns) and ``trained_at`` (live count when an IVF was trained, else 0).
    Callers hold the index's lock: shared to read, exclusive to :meth:`add` or :meth:`drop`."""

    __slots__ = ("index", "pos_ids", "alive", "pos_of", "meta", "trained_at")

    def __init__(self, index: faiss.Index, pos_ids: np.ndarray, alive: np.ndarray, pos_of: dict[int, int],
                 meta: ColumnStore, trained_at: int) -> None:
        self.index, self.pos_ids, self.alive, self.pos_of = index, pos_ids, alive, pos_of
        self.meta, self.trained_at = meta, trained_at

    @classmethod
    def empty(cls, index: faiss.Index) -> FaissState:
        """A state with no positions over the empty ``index``."""
        return cls(index, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), {}, ColumnStore(), 0)

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]],
            new_fields: Mapping[str, str]) -> None:
        """Append ``ids`` (unique) at new positions; an id already live has its old one tombstoned."""
        start = len(self.pos_ids)
        old = [self.pos_of[i] for i in ids.tolist() if i in self.pos_of]
        self.index.add(vectors)
        self.pos_ids = np.concatenate([self.pos_ids, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])
        self.alive[old] = False
        self.meta.append(rows, new_fields)
        self.pos_of.update(zip(ids.tolist(), range(start, start + len(ids))))

    def drop(self, ids: np.ndarray) -> int:
        """Tombstone the live ones of ``ids``; return how many were live."""
        gone = [self.pos_of.pop(i) for i in set(ids.tolist()) if i in self.pos_of]
        self.alive[gone] = False
        return len(gone)

    def replay(self, entries: Iterable[LogEntry]) -> None:
        """Apply logged writes in order."""
        for e in entries:
            if e.vectors is None:
                self.drop(e.ids)
            else:
                self.add(e.ids, e.vectors, e.rows or [], e.new_fields or {})


class Snapshot:
    """The live part of ``state`` at one moment (the caller holds the index's lock): its
    positions ``keep``, their ``ids`` and ``meta``, a private copy of the state's metadata; the
    ``state`` itself is read for the vectors."""

    def __init__(self, state: FaissState, meta: ColumnStore) -> None:
        self.state = state
        self.keep = np.flatnonzero(state.alive)
        self.ids = state.pos_ids[self.keep]
        self.meta = meta

    def read(self, positions: np.ndarray, lock: RWLock, cancel: threading.Event) -> np.ndarray:
        """The stored vectors at ``positions`` of the snapshot's state, a chunk at a time under
        ``lock`` shared (positions below the state's size never change: writes only append)."""
        out = np.empty((len(positions), self.state.index.d), dtype=np.float32)
        for lo in range(0, len(positions), CHUNK):
            if cancel.is_set():
                raise Cancelled
            with lock.read():
                out[lo : lo + CHUNK] = self.state.index.reconstruct_batch(positions[lo : lo + CHUNK])
        return out

    def build(self, index: faiss.Index, lock: RWLock, cancel: threading.Event) -> FaissState:
        """A new state of the snapshot's live items in the empty ``index`` (an IVF is trained
        first, on at most the points FAISS's k-means would sample, chosen with a fixed seed)."""
        n = len(self.keep)
        trained_at = 0
        if isinstance(index, faiss.IndexIVF):
            cap = _POINTS_PER_CENTROID * index.nlist
            sample = self.keep if n <= cap else np.sort(np.random.default_rng(0).choice(self.keep, cap, replace=False))
            index.train(self.read(sample, lock, cancel))
            # an array direct map lets reconstruct_batch read the vectors back for the next rebuild
            index.set_direct_map_type(faiss.DirectMap.Array)
            trained_at = n
        for lo in range(0, n, CHUNK):
            index.add(self.read(self.keep[lo : lo + CHUNK], lock, cancel))
        self.meta.take(self.keep)
        pos_of = dict(zip(self.ids.tolist(), range(n)))
        return FaissState(index, self.ids, np.ones(n, dtype=bool), pos_of, self.meta, trained_at)


# ---------------------------------------------------------------------------------- persistence


def write_state(state: FaissState, settings: Mapping[str, Any], directory: Path) -> tuple[bytes, dict[str, Any]]:
    """Write ``state.npz`` (id maps, metadata columns) of ``state`` into ``directory``; return the
    serialized FAISS index and the ``meta.json`` description (with the index's size and sha256) for
    the caller to write. The caller holds the index's lock (shared)."""
    blob = faiss.serialize_index(state.index).tobytes()
    desc, arrays = state.meta.to_arrays()
    arrays = {"pos_ids": state.pos_ids, "alive": state.alive, **arrays}
    with open(directory / _STATE_FILE, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    return blob, {
        "format": FORMAT,
        "version": VERSION,
        "settings": dict(settings),
        "trained_at": state.trained_at,
        "positions": len(state.pos_ids),
        "live": len(state.pos_of),
        "metadata": desc,
        "index_bytes": len(blob),
        "index_sha256": hashlib.sha256(blob).hexdigest(),
        "index_quick": quick_hash_bytes(blob),
    }


def read_state(directory: Path, meta: Mapping[str, Any], dim: int) -> FaissState:
    """The state saved in ``directory`` (described by its ``meta``, of dimension ``dim``); a
    missing file raises :class:`StoreError`, a damaged or inconsistent one :class:`CorruptStoreError`.

    The index file's size, magic and quick hash (its two ends, :func:`~recsieve.storage.quick_hash_file`)
    are checked, then FAISS reads it straight from the file; its sha256 is checked instead where
    the metadata predates quick hashes, and in full by ``recsieve verify`` (the snapshot's manifest).
    """
    try:
        n_pos, n_live, trained_at = int(meta["positions"]), int(meta["live"]), int(meta["trained_at"])
        expected_size, expected_sha = int(meta["index_bytes"]), str(meta["index_sha256"])
        expected_quick = meta.get("index_quick")
        desc = meta["metadata"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptStoreError(f"{directory / META_FILE}: bad or missing entry ({exc})") from None
    path = directory / INDEX_FILE
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            magic = fh.read(4)
        digest = quick_hash_file(path, size) if expected_quick is not None else None
        if size == expected_size and magic in _MAGICS and digest is None:
            digest, expected_quick = hashlib.sha256(path.read_bytes()).hexdigest(), expected_sha
    except FileNotFoundError:
        raise StoreError(f"{directory}: missing {INDEX_FILE}") from None
    if size != expected_size or magic not in _MAGICS or digest != expected_quick:
        raise CorruptStoreError(f"{path} is truncated or corrupted (size/checksum mismatch)")
    try:
        with np.load(directory / _STATE_FILE, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        pos_ids, alive = arrays.pop("pos_ids"), arrays.pop("alive")
        store = ColumnStore.from_arrays(desc, arrays)
    except FileNotFoundError:
        raise StoreError(f"{directory}: missing {_STATE_FILE}") from None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise CorruptStoreError(f"{directory / _STATE_FILE} is truncated or corrupted ({exc})") from None
    if (
        pos_ids.dtype != np.int64
        or alive.dtype != bool
        or pos_ids.shape != (n_pos,)
        or alive.shape != (n_pos,)
        or store.size != n_pos
        or int(alive.sum()) != n_live
        or (n_pos and pos_ids.min() < 0)
    ):
        raise CorruptStoreError(f"{directory / _STATE_FILE}: id maps are inconsistent with {META_FILE}")
    pos_of = dict(zip(pos_ids[alive].tolist(), np.flatnonzero(alive).tolist(), strict=True))
    if len(pos_of) != n_live:  # an id at two live positions
        raise CorruptStoreError(f"{directory / _STATE_FILE}: id maps are inconsistent with {META_FILE}")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise CorruptStoreError(f"{directory / INDEX_FILE} cannot be read by FAISS ({str(exc)[:200]})") from None
    if index.d != dim or index.ntotal != n_pos or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CorruptStoreError(f"{directory / INDEX_FILE}: dimension/size/metric do not match {META_FILE}")
    return FaissState(index, pos_ids, alive, pos_of, store, trained_at)
