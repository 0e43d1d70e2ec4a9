"""The engine's state and its durability: catalog, item vectors, vector index, users, recall
statistics, the journal, and the snapshots they are saved in.

An engine lives in a directory::

    DIR/recsieve.toml      settings (EngineConfig)
    DIR/journal.sqlite     write-ahead journal of events and item changes (SQLite, WAL)
    DIR/MANIFEST.json      points at the current snapshot generation
    DIR/gen-NNNNNNNN/      catalog, vectors, index, users — written atomically by ``save``

Every write is journaled before it changes memory (:meth:`Store.journal_upsert`,
:meth:`Store.journal_remove`, :meth:`Store.journal_events`); :meth:`Store.load` reads the
snapshot and replays the journal after it, so nothing acknowledged is lost even without a
save. The :class:`Store` knows nothing of requests, models or caches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recsieve.catalog import Catalog
from recsieve.engine.config import EngineConfig
from recsieve.engine.journal import EventRecord, ItemOp, Journal
from recsieve.engine.recall import (
    PopularityChannel,
    RecallChannel,
    TransitionsChannel,
    VectorChannel,
)
from recsieve.engine.users import UserStore, UserView
from recsieve.errors import InvalidInputError, StoreError
from recsieve.indexes.base import SearchParams, VectorIndex
from recsieve.indexes.checks import kind_of
from recsieve.rendering import content_hash
from recsieve.storage import GenerationDir
from recsieve.types import Item
from recsieve.vectors import as_matrix

__all__ = ["Store", "ItemListener", "new_index", "load_index"]


class ItemListener(Protocol):
    """Told of every catalog change as it is applied (by this process or replayed from the
    journal), under the store's write lock: e.g. a second index over other item vectors."""

    def items_upserted(self, rows: np.ndarray, text_vectors: np.ndarray) -> None: ...

    def items_removed(self, rows: np.ndarray) -> None: ...


def _faiss_new(config: EngineConfig, dim: int) -> VectorIndex:
    from recsieve.indexes.faiss_index import FaissIndex

    return FaissIndex(dim, kind=config.index, ef_search=config.ef_search, nprobe=config.nprobe)


def _faiss_load(folder: Path) -> VectorIndex:
    from recsieve.indexes.faiss_index import FaissIndex

    return FaissIndex.load(folder)


def _lance_new(config: EngineConfig, dim: int) -> VectorIndex:
    from recsieve.indexes.lance_index import LanceIndex

    kinds = {"flat": "none", "hnsw": "hnsw_sq", "ivf": "ivf_pq"}
    return LanceIndex(dim, index_type=kinds[config.index])


def _lance_load(folder: Path) -> VectorIndex:
    from recsieve.indexes.lance_index import LanceIndex

    return LanceIndex.load(folder)


#: backend name -> (make a new index, load a saved one). The only place backends are named.
_BACKENDS = {"faiss": (_faiss_new, _faiss_load), "lance": (_lance_new, _lance_load)}


def new_index(config: EngineConfig, dim: int) -> VectorIndex:
    """An empty vector index of the config's backend and kind."""
    return _BACKENDS[config.backend][0](config, dim)


def load_index(config: EngineConfig, folder: Path) -> VectorIndex:
    """The vector index saved in ``folder`` by the config's backend."""
    return _BACKENDS[config.backend][1](folder)


def _item_kwargs(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if "categories" in out:
        out["categories"] = tuple(out["categories"])
    return out


class Store:
    """Everything an engine knows, and the one way it changes: journal first, then memory.

    ``write_lock`` serialises writers (and snapshots); readers never take it.
    """

    def __init__(self, directory: Path, config: EngineConfig) -> None:
        self.directory = directory
        self.config = config
        self.write_lock = threading.RLock()
        self.catalog = Catalog(config.template) if config.template else Catalog()
        self.dim = 0
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        #: row -> content hash of the text its vector was embedded from
        self.hashes: dict[int, str] = {}
        #: metadata field -> the one kind it holds (number, bool, string), as the index enforces it
        self.field_kinds: dict[str, str] = {}
        self.index: VectorIndex | None = None
        self.users: UserStore | None = None
        self.journal: Journal | None = None
        self.snapshot_seq = 0
        #: recall channels (their statistics: transitions, popularity) in config order
        self.channels: list[RecallChannel] = []
        #: told of every catalog change (see :class:`ItemListener`)
        self.listeners: list[ItemListener] = []
        self._last_row: dict[str, int] = {}
        self._generations = GenerationDir(directory, "engine")

    # -- construction ------------------------------------------------------------------

    def init_empty(self, dim: int) -> None:
        """Fresh, empty state of dimension ``dim`` (a new engine directory)."""
        self.dim = dim
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.index = new_index(self.config, dim)
        self.users = self.new_user_store()
        self.journal = Journal(self.directory / "journal.sqlite", dim)
        self.channels = self.new_channels()

    def new_user_store(self) -> UserStore:
        """An empty user store with the config's window and half-life."""
        return UserStore(self.dim, recent_window=self.config.recent_window, half_life_days=self.config.half_life_days)

    def new_channels(self) -> list[RecallChannel]:
        """Fresh recall channels as the config names them (statistics empty)."""
        cfg = self.config
        makers = {
            "vector": lambda: VectorChannel(self.index, SearchParams(ef_search=cfg.ef_search, nprobe=cfg.nprobe)),
            "transitions": TransitionsChannel,
            "popularity": lambda: PopularityChannel(lambda: self.catalog.num_rows),
        }
        return [makers[name]() for name in cfg.channels]

    def load(self) -> None:
        """Load the last snapshot, then replay the journal after it."""
        folder, meta = self._generations.open()
        self._check_meta(meta)
        self.dim = dim = int(meta["dim"])
        self.catalog = Catalog.load(folder / "catalog")
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        self.vectors = as_matrix(vectors, dim, "vectors.npy") if vectors.size else np.zeros((0, dim), np.float32)
        hashes = meta.get("hashes_file")
        if hashes:
            self.hashes = {int(k): v for k, v in json.loads((folder / hashes).read_text("utf-8")).items()}
        self.field_kinds = dict(meta.get("field_kinds") or {})
        for item in self.catalog:  # snapshots written before field kinds were saved
            self._note_field_kinds(item)
        self.index = load_index(self.config, folder / "index")
        if self.index.dim != dim:
            raise StoreError(f"{self.directory}: index dimension {self.index.dim} != snapshot dimension {dim}")
        self.users = self.new_user_store()
        self.users.load(folder / "users")
        self.snapshot_seq = int(meta["seq"])
        self._open_journal()
        self.channels = self.new_channels()
        for entry in self.journal.replay(self.snapshot_seq):
            if isinstance(entry, ItemOp):
                if entry.op == "upsert":
                    self.apply_upsert([Item(**_item_kwargs(d)) for d in entry.payload], entry.vectors)
                else:
                    self.apply_remove(list(entry.payload))
            else:
                self.apply_event(entry, statistics=False)
        self._rebuild_statistics()

    def _check_meta(self, meta: Mapping[str, Any]) -> None:
        if meta.get("backend") != self.config.backend:
            raise StoreError(
                f"{self.directory}: snapshot holds a {meta.get('backend')!r} index but the config says "
                f"backend={self.config.backend!r}; rebuild the index or restore the config"
            )
        if meta.get("embedding_model") != self.config.embedding_model:
            raise StoreError(
                f"{self.directory}: vectors were made by {meta.get('embedding_model')!r} but the config says "
                f"embedding_model={self.config.embedding_model!r}; re-embed with build-index --out to a new directory"
            )

    def _open_journal(self) -> None:
        path = self.directory / "journal.sqlite"
        if self.snapshot_seq > 0 and not path.exists():
            raise StoreError(
                f"{self.directory}: journal.sqlite is missing but the snapshot needs its entries up to "
                f"{self.snapshot_seq}; restore journal.sqlite (a new one is not created)"
            )
        self.journal = Journal(path, self.dim)
        if self.journal.last_seq < self.snapshot_seq:
            raise StoreError(
                f"{self.directory}: the journal ends at {self.journal.last_seq} but the snapshot needs "
                f"{self.snapshot_seq}; journal.sqlite was replaced or truncated"
            )

    def _rebuild_statistics(self) -> None:
        """Recompute recall statistics (transitions, popularity) from every journaled event."""
        self._last_row = {}
        for rec in self.journal.events():
            self._observe(rec)

    def _observe(self, rec: EventRecord) -> None:
        positive = self.users.event_weight(rec.kind, rec.weight) > 0
        prev = self._last_row.get(rec.user_id)
        for ch in self.channels:
            ch.observe(prev, rec.row, positive)
        if positive:
            self._last_row[rec.user_id] = rec.row

    # -- items -------------------------------------------------------------------------

    def check_field_kinds(self, items: Sequence[Item]) -> None:
        """Each metadata field holds one kind of value (number, bool or string) for good."""
        seen = dict(self.field_kinds)
        for i, item in enumerate(items):
            for key, value in item.metadata.items():
                kind = kind_of(value)
                known = seen.setdefault(key, kind)
                if kind != known:
                    raise InvalidInputError(
                        f"items[{i}].metadata.{key}", value, f"field {key!r} holds {known} values in this engine, got {kind}"
                    )

    def _note_field_kinds(self, item: Item) -> None:
        for key, value in item.metadata.items():
            self.field_kinds.setdefault(key, kind_of(value))

    def journal_upsert(self, items: Sequence[Item], vectors: np.ndarray, hashes: Sequence[str]) -> None:
        """Journal an upsert durably, then apply it (caller holds ``write_lock``)."""
        self.journal.append_item_op("upsert", [it.to_dict() for it in items], vectors)
        self.apply_upsert(items, vectors, hashes)

    def apply_upsert(self, items: Sequence[Item], vectors: np.ndarray, hashes: Sequence[str] | None = None) -> None:
        if hashes is None:
            hashes = [content_hash(self.catalog.render(it)) for it in items]
        rows = self.catalog.upsert(items)
        need = int(rows.max()) + 1 if rows.size else 0
        if need > self.vectors.shape[0]:
            grown = np.zeros((max(need, 2 * self.vectors.shape[0]), self.dim), dtype=np.float32)
            grown[: self.vectors.shape[0]] = self.vectors
            self.vectors = grown
        self.vectors[rows] = vectors
        for r, h in zip(rows.tolist(), hashes):
            self.hashes[r] = h
        self.index.upsert(rows, vectors, [dict(it.metadata) for it in items])
        for it in items:
            self._note_field_kinds(it)
        for listener in self.listeners:
            listener.items_upserted(rows, vectors)

    def journal_remove(self, ids: list[str]) -> None:
        """Journal a removal durably, then apply it (caller holds ``write_lock``)."""
        self.journal.append_item_op("remove", ids)
        self.apply_remove(ids)

    def apply_remove(self, ids: list[str]) -> None:
        rows = self.catalog.rows(ids)
        self.index.remove(rows)  # first the index, so a concurrent search never sees a dangling row
        for listener in self.listeners:
            listener.items_removed(rows)
        self.catalog.remove(ids)

    # -- events ------------------------------------------------------------------------

    def journal_events(self, recs: Sequence[tuple]) -> None:
        """Journal events durably, then apply them (caller holds ``write_lock``).

        ``recs``: ``(user_id, item_id, row, kind, ts, weight, text)`` tuples.
        """
        last = self.journal.append_events(recs)
        for seq, r in enumerate(recs, start=last - len(recs) + 1):
            self.apply_event(EventRecord(seq, *r))

    def apply_event(self, rec: EventRecord, statistics: bool = True) -> None:
        self.users.apply(rec.user_id, rec.row, self.vectors[rec.row], rec.kind, rec.ts, rec.weight, rec.text)
        if statistics:
            self._observe(rec)

    def history_view(self, rows: Sequence[int], kinds: Sequence[str] | None = None,
                     times: Sequence[float] | None = None, user_id: str = "(history)") -> UserView | None:
        """The view a user with this history would have (nothing is recorded or journaled)."""
        store = self.new_user_store()
        for i, row in enumerate(rows):
            kind = kinds[i] if kinds is not None else "click"
            ts = float(times[i]) if times is not None else float(i)
            store.apply(user_id, int(row), self.vectors[int(row)], kind, ts, None, None)
        return store.get(user_id)

    def statistics(self) -> tuple[list[RecallChannel], int]:
        """A copy of the recall statistics and the journal sequence they include (one moment)."""
        with self.write_lock:
            return [ch.copy() for ch in self.channels], self.journal.last_seq

    # -- persistence -------------------------------------------------------------------

    def save(self) -> None:
        """Write a snapshot atomically (a crash mid-save leaves the previous one loadable)."""
        with self.write_lock:
            seq = self.journal.last_seq

            def write(folder: Path) -> None:
                (folder / "catalog").mkdir()
                self.catalog.save(folder / "catalog")
                np.save(folder / "vectors.npy", self.vectors[: self.catalog.num_rows], allow_pickle=False)
                (folder / "hashes.json").write_text(json.dumps({str(k): v for k, v in self.hashes.items()}), "utf-8")
                (folder / "index").mkdir()
                self.index.save(folder / "index")
                (folder / "users").mkdir()
                self.users.save(folder / "users")

            meta = {
                "seq": seq,
                "dim": self.dim,
                "backend": self.config.backend,
                "index": self.config.index,
                "embedding_model": self.config.embedding_model,
                "hashes_file": "hashes.json",
                "field_kinds": dict(self.field_kinds),
                "items": len(self.catalog),
                "users": len(self.users),
            }
            self._generations.commit(write, meta)
            self.journal.truncate_item_ops(seq)
            self.snapshot_seq = seq

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
