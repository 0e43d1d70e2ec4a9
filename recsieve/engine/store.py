"""The engine's state and its durability: catalog, item vectors, vector index, users, recall
statistics, the journal, and the snapshots they are saved in.

An engine lives in a directory::

    DIR/recsieve.toml      settings (EngineConfig)
    DIR/journal.sqlite     write-ahead journal of events and item changes (SQLite, WAL; or the config's Redis stream)
    DIR/MANIFEST.json      points at the current snapshot generation
    DIR/gen-NNNNNNNN/      catalog, vectors, index, users, recall statistics — written atomically by ``save``
    DIR/recsieve.lock      file lock: one snapshot (or model switch) writer; snapshot readers share it

Every write is journaled before it changes memory (:meth:`Store.journal_upsert`,
:meth:`Store.journal_remove`, :meth:`Store.journal_events`); :meth:`Store.load` reads the
snapshot and replays the journal after it, so nothing acknowledged is lost even without a
save. The snapshot holds the recall statistics as of its sequence
(:mod:`recsieve.engine.snapshot_stats`), so opening observes only the events after it, in
bulk; its vectors are memory-mapped. The :class:`Store` knows nothing of requests, models or
caches.

Many processes may open one directory. Each keeps ``applied_seq``, the last journal entry it
has applied, and :meth:`Store.catch_up` applies the journal's tail after it (one cheap check
when nothing is new). A write happens inside :meth:`Store.writing`: the journal's write
transaction, in which the store first applies the tail, then the caller checks its write
against that state and journals it, and it is applied after the commit. So every process
applies every entry in journal order, and catalog rows agree everywhere. A snapshot records the
sequence its process had applied; compaction after it (:meth:`Store.save`) can drop item
operations a lagging process has not applied, which it notices (the journal's floor) and
reloads from the newest snapshot, losing nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recsieve.catalog import Catalog
from recsieve.embedding import AUTO_BACKEND, EMBEDDING_BACKENDS, resolve_backend
from recsieve.engine.backends import load_index, new_index
from recsieve.engine.config import EngineConfig
from recsieve.engine.journal import (
    Entry,
    EventColumns,
    EventRecord,
    ItemOp,
    JournalBackend,
    JournalTruncated,
)
from recsieve.engine.journals import open_journal
from recsieve.engine.recall import (
    PopularityChannel,
    RecallChannel,
    TransitionsChannel,
    VectorChannel,
)
from recsieve.engine.row_hashes import HASHES_FILE, RowHashes
from recsieve.engine.snapshot_stats import (
    install_statistics,
    observe_events,
    paused_gc,
    read_statistics,
    replay_statistics,
    save_statistics,
)
from recsieve.engine.users import UserStore, UserView
from recsieve.errors import CorruptStoreError, InvalidInputError, StoreError
from recsieve.indexes.base import SearchParams, VectorIndex
from recsieve.indexes.checks import kind_of
from recsieve.locks import FileLock
from recsieve.rendering import content_hash
from recsieve.storage import GenerationDir
from recsieve.types import Item

__all__ = ["Store", "ItemListener", "new_index", "load_index", "LOCK_FILE"]

log = logging.getLogger("recsieve")

#: The engine directory's lock file: snapshots and model switches hold it exclusively, snapshot
#: readers shared (so a snapshot is never collected while another process reads it).
LOCK_FILE = "recsieve.lock"


class ItemListener(Protocol):
    """Told of every catalog change as it is applied (by this process or replayed from the
    journal), under the store's write lock: e.g. a second index over other item vectors."""

    def items_upserted(self, rows: np.ndarray, text_vectors: np.ndarray) -> None: ...

    def items_removed(self, rows: np.ndarray) -> None: ...


def _map_vectors(path: Path, dim: int) -> np.ndarray:
    """A snapshot's item vectors, memory-mapped copy-on-write: pages are read when used, and an
    in-place update (an item's new vector) stays in this process, never reaching the file."""
    try:
        vectors = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorruptStoreError(f"{path}: unreadable vectors ({exc})") from None
    if vectors.size == 0:
        return np.zeros((0, dim), np.float32)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dim:
        raise CorruptStoreError(f"{path}: vectors of {vectors.dtype} {vectors.shape}, expected float32 (n, {dim})")
    return vectors.view(np.ndarray)


def _item_kwargs(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if "categories" in out:
        out["categories"] = tuple(out["categories"])
    return out


class Store:
    """Everything an engine knows, and the one way it changes: journal first, then memory.

    ``write_lock`` serialises this process's writers, catch-ups and snapshots; a reader takes it
    only when the journal holds something new. ``applied_seq`` is the last journal entry the
    state includes; ``lock`` is the directory's file lock (see :data:`LOCK_FILE`).
    """

    def __init__(self, directory: Path, config: EngineConfig) -> None:
        self.directory = directory
        self.config = config
        #: the backend this directory's vectors are embedded with: the config's, resolved; with
        #: ``auto``, the one its snapshot records (what ``auto`` picks depends on the machine)
        self.embedding_backend = resolve_backend(config.embedding_backend)
        self.write_lock = threading.RLock()
        self.catalog = Catalog(config.template) if config.template else Catalog()
        self.dim = 0
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        #: row -> content hash of the text its vector was embedded from
        self.hashes = RowHashes()
        #: metadata field -> the one kind it holds (number, bool, string), as the index enforces it
        self.field_kinds: dict[str, str] = {}
        self.index: VectorIndex | None = None
        self.users: UserStore | None = None
        self.journal: JournalBackend | None = None
        self.snapshot_seq = 0
        #: the last journal entry applied to this state
        self.applied_seq = 0
        self.lock = FileLock(directory / LOCK_FILE)
        self._synced: int | None = None  # the journal's version when the state last caught up
        self._pending: list[tuple[int, Callable[[], None]]] | None = None  # own entries, applied after commit
        self._tx_head = 0  # inside writing(): where the journal ends
        #: recall channels (their statistics: transitions, popularity) in config order
        self.channels: list[RecallChannel] = []
        #: told of every catalog change (see :class:`ItemListener`)
        self.listeners: list[ItemListener] = []
        #: each user's last positive row (where the next transition starts)
        self._last_row: dict[str, int] = {}
        #: the sequence the installed snapshot's statistics include (None: it has none; rebuild)
        self._stats_seq: int | None = None
        self._generations = GenerationDir(directory, "engine")

    # -- construction ------------------------------------------------------------------

    def init_empty(self, dim: int, index: VectorIndex | None = None) -> None:
        """Fresh, empty state of dimension ``dim`` (a new engine directory), over ``index`` if given."""
        self.dim = dim
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.index = new_index(self.config, dim) if index is None else index
        self.users = self.new_user_store()
        self.journal = open_journal(self.directory, self.config, dim)
        self.channels = self.new_channels()
        self._synced = self.journal.version()
        self.applied_seq = self.journal.head()
        if self.applied_seq:
            raise StoreError(f"{self.directory}: journal {self.journal.path} already holds entries; open the directory")

    def new_user_store(self) -> UserStore:
        """An empty user store with the config's window and half-life."""
        cfg = self.config
        return UserStore(self.dim, recent_window=cfg.recent_window, history_window=cfg.context_window,
                         half_life_days=cfg.half_life_days)

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
        with paused_gc():
            self._install_snapshot()
            self._replay()

    def _install_snapshot(self, *, dir_locked: bool = False) -> None:
        """Read the newest snapshot (holding the directory's lock shared, unless this thread holds
        it already) and make it the state; open the journal the first time."""
        if not self._generations.exists():
            self._generations.open()  # raises the clear error, and creates no lock file
        with nullcontext() if dir_locked else self.lock.shared():
            folder, meta = self._generations.open()
            self._check_meta(meta)
            dim = int(meta["dim"])
            if self.dim and dim != self.dim:
                raise StoreError(f"{self.directory}: the newest snapshot has dimension {dim}, this engine {self.dim}")
            catalog = Catalog.load(folder / "catalog")
            vectors = _map_vectors(folder / "vectors.npy", dim)
            hashes = RowHashes.load(folder / meta["hashes_file"]) if meta.get("hashes_file") else RowHashes()
            field_kinds = dict(meta.get("field_kinds") or {})
            index = load_index(self.config, folder / "index")
            if index.dim != dim:
                raise StoreError(f"{self.directory}: index dimension {index.dim} != snapshot dimension {dim}")
            self.dim = dim
            users = self.new_user_store()
            users.load(folder / "users")
            saved_stats = read_statistics(folder, meta.get("statistics"))
        old_live = self.catalog.live_rows() if self.listeners else None
        # Rows are stable and the snapshot is newer than this state: its vectors are a superset,
        # so a reader in another thread that mixes old and new parts never reads past them.
        self.vectors, self.hashes, self.field_kinds = vectors, hashes, field_kinds
        previous, (self.catalog, self.index, self.users) = self.index, (catalog, index, users)
        if previous is not None and previous is not index:
            previous.close()  # its background compaction, if any, is cancelled; readers may still search it
        if "field_kinds" not in meta:  # snapshots written before field kinds were saved
            for item in self.catalog:
                self._note_field_kinds(item)
        self.snapshot_seq = self.applied_seq = int(meta["seq"])
        if self.journal is None:
            self._open_journal()
        channels = self.new_channels()
        installed = install_statistics(saved_stats, channels)
        self._last_row, self._stats_seq = installed if installed is not None else ({}, None)
        if self._stats_seq is not None and self._stats_seq > self.snapshot_seq:
            raise StoreError(f"{self.directory}: the snapshot's statistics include entries up to "
                             f"{self._stats_seq}, past the snapshot's {self.snapshot_seq}")
        self.channels = channels
        if old_live is not None:
            live = catalog.live_rows()
            gone = np.setdiff1d(old_live, live)
            for listener in self.listeners:
                if gone.size:
                    listener.items_removed(gone)
                listener.items_upserted(live, vectors[live])

    def _replay(self, *, dir_locked: bool = False) -> None:
        """Apply the journal after the installed snapshot, runs of events as columns in bulk; the
        recall statistics observe them along when the snapshot's were current, else they are
        brought up to date after (in bulk). A compaction past the snapshot meanwhile reloads."""
        while True:
            version = self.journal.version()
            along = self._stats_seq == self.applied_seq
            try:
                for entry in self.journal.tail_columns(self.applied_seq):
                    if isinstance(entry, ItemOp):
                        self._apply(entry, statistics=False)
                    else:
                        self._apply_columns(entry, statistics=along)
            except JournalTruncated:
                self._install_snapshot(dir_locked=dir_locked)
                continue
            break
        if along:
            self._stats_seq = self.applied_seq
        else:
            self._update_statistics()
        self._synced = version

    def _apply_columns(self, events: EventColumns, *, statistics: bool) -> None:
        """Apply journaled events given as columns to the user state (and, with ``statistics``,
        to the recall statistics) in bulk."""
        try:
            weights = self.users.event_weights(events.kinds, events.weights)
        except KeyError as exc:
            raise CorruptStoreError(f"journal {self.journal.path}: an event of unknown kind {exc}") from None
        self.users.apply_columns(events.users, events.rows, events.kinds, events.ts, weights, events.texts,
                                 self.vectors)
        if statistics:
            observe_events(self.channels, self._last_row, events.users, events.rows, weights > 0)
        self.applied_seq = int(events.seq[-1])

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
        made = meta.get("embedding_backend", "torch")  # snapshots from before backends were recorded: torch fp32
        if self.config.embedding_backend == AUTO_BACKEND and made in EMBEDDING_BACKENDS:
            self.embedding_backend = made  # auto keeps what the index was built with, wherever it opens
        wanted = self.embedding_backend
        if made != wanted:
            raise StoreError(
                f"{self.directory}: vectors were embedded with backend {made!r} but the config's "
                f"embedding_backend={self.config.embedding_backend!r} embeds with {wanted!r}; vectors of two backends "
                f"are never mixed: set embedding_backend = {made!r} in [items] (installing its extra if needed) "
                "or re-embed with build-index --out to a new directory"
            )

    def _open_journal(self) -> None:
        path = self.directory / "journal.sqlite"
        if not self.config.journal and self.snapshot_seq > 0 and not path.exists():
            raise StoreError(
                f"{self.directory}: journal.sqlite is missing but the snapshot needs its entries up to "
                f"{self.snapshot_seq}; restore journal.sqlite (a new one is not created)"
            )
        self.journal = open_journal(self.directory, self.config, self.dim)
        head = self.journal.head()
        if head < self.snapshot_seq:
            raise StoreError(
                f"{self.directory}: the journal ends at {head} but the snapshot needs "
                f"{self.snapshot_seq}; journal {self.journal.path} was replaced or truncated"
            )

    def _update_statistics(self) -> None:
        """Observe the events after the installed statistics, up to ``applied_seq``, in bulk; when
        the snapshot held none (written before they were saved), every event from the start."""
        after = self._stats_seq
        if after is None:
            log.warning("recsieve: %s: the snapshot holds no recall statistics (written before they were "
                        "saved, or without a channel now configured); rebuilding them from all %d journal "
                        "entries (the next save stores them)", self.directory, self.applied_seq)
            self.channels, self._last_row, after = self.new_channels(), {}, 0
        replay_statistics(self.journal, self.users, self.channels, self._last_row, after, self.applied_seq)
        self._stats_seq = self.applied_seq

    # -- many processes: the journal's tail --------------------------------------------

    def catch_up(self) -> int:
        """Apply what other processes journaled since this state last caught up; return how many
        entries. One cheap check (the journal's version) when nothing is new."""
        if self.journal is None or self.journal.version() == self._synced:
            return 0
        with self.write_lock:
            return self._apply_tail()

    def _apply_tail(self, *, dir_locked: bool = False) -> int:
        """Apply the journal after ``applied_seq`` (caller holds ``write_lock``); reload from the
        newest snapshot when compaction dropped item operations not applied here."""
        version = self.journal.version()
        n = 0
        try:
            for entry in self.journal.tail(self.applied_seq):
                self._apply(entry)
                n += 1
        except JournalTruncated:
            if self._pending is not None:
                raise  # inside a write transaction: writing() rolls back before it reloads
            self._reload(dir_locked=dir_locked)
            return n + self._apply_tail(dir_locked=dir_locked)
        self._synced = version
        return n

    def _reload(self, *, dir_locked: bool = False) -> None:
        log.info("recsieve: %s: another process compacted the journal past entry %d; reloading the newest snapshot",
                 self.directory, self.applied_seq)
        with paused_gc():
            self._install_snapshot(dir_locked=dir_locked)
            self._replay(dir_locked=dir_locked)

    def _apply(self, entry: Entry, statistics: bool = True) -> None:
        if isinstance(entry, ItemOp):
            if entry.op == "upsert":
                self.apply_upsert([Item(**_item_kwargs(d)) for d in entry.payload], entry.vectors)
            else:
                self.apply_remove(list(entry.payload))
        else:
            self.apply_event(entry, statistics)
        self.applied_seq = entry.seq

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A write: this process's write lock and the journal's write transaction, with every
        entry before it applied. Inside, check the write against the state and journal it
        (:meth:`journal_upsert`, :meth:`journal_remove`, :meth:`journal_events`); it commits
        when the block ends and is applied then (an exception journals nothing). Re-entrant."""
        with self.write_lock:
            if self._pending is not None:
                yield
                return
            while True:
                stack = ExitStack()
                stack.enter_context(self.journal.writing())
                self._pending = []
                try:
                    self._apply_tail()
                except JournalTruncated:
                    self._pending = None
                    stack.close()  # out of the write transaction before waiting for a snapshot's lock
                    self._reload()
                    continue
                except BaseException:
                    self._pending = None
                    stack.close()
                    raise
                break
            self._tx_head = self.applied_seq
            try:
                with stack:
                    yield
            except BaseException:
                self._pending = None
                raise
            pending, self._pending = self._pending, None
            for seq, apply in pending:
                apply()
                self.applied_seq = seq
            if pending:
                # The commit changed the journal's version. Taken before the head: when the head is
                # still this write, nothing came after it, and the next request need not look.
                version = self.journal.version()
                if self.journal.head() == self.applied_seq:
                    self._synced = version

    def _journal(self, entries: Sequence[Entry], apply: Callable[[int], None]) -> None:
        """Append ``entries`` in the current write; ``apply(first_seq)`` runs after the commit."""
        with self.writing():
            last = self.journal.append(entries, after=self._tx_head)
            self._tx_head = last
            first = last - len(entries) + 1
            self._pending.append((last, lambda: apply(first)))

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
        """Journal an upsert durably, then apply it (inside :meth:`writing`, or as a write of its own)."""
        self._journal([ItemOp(0, "upsert", [it.to_dict() for it in items], vectors)],
                      lambda _seq: self.apply_upsert(items, vectors, hashes))

    def stale_texts(self, items: Sequence[Item], hashes: Sequence[str]) -> list[int]:
        """Positions of ``items`` whose text this state holds no vector of (new, or text changed):
        what an upsert must embed."""
        out = []
        for i, (it, h) in enumerate(zip(items, hashes)):
            row = self.catalog.row(it.id) if it.id in self.catalog else None
            if row is None or self.hashes.get(row) != h:
                out.append(i)
        return out

    def apply_upsert(self, items: Sequence[Item], vectors: np.ndarray, hashes: Sequence[str] | None = None, *,
                     indexed: bool = False) -> None:
        """Apply an upsert to memory; ``indexed``: the vector index holds these rows already."""
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
        if not indexed:
            self.index.upsert(rows, vectors, [dict(it.metadata) for it in items])
        for it in items:
            self._note_field_kinds(it)
        for listener in self.listeners:
            listener.items_upserted(rows, vectors)

    def journal_remove(self, ids: list[str]) -> None:
        """Journal a removal durably, then apply it (inside :meth:`writing`, or as a write of its own)."""
        self._journal([ItemOp(0, "remove", list(ids), None)], lambda _seq: self.apply_remove(ids))

    def apply_remove(self, ids: list[str]) -> None:
        rows = self.catalog.rows(ids)
        self.index.remove(rows)  # first the index, so a concurrent search never sees a dangling row
        for listener in self.listeners:
            listener.items_removed(rows)
        self.catalog.remove(ids)

    # -- events ------------------------------------------------------------------------

    def journal_events(self, recs: Sequence[tuple]) -> None:
        """Journal events durably, then apply them (inside :meth:`writing`, or as a write of its own).

        ``recs``: ``(user_id, item_id, row, kind, ts, weight, text)`` tuples, rows as the
        catalog holds them inside the write.
        """
        entries = [EventRecord(0, *r) for r in recs]

        def apply(first: int) -> None:
            for seq, r in enumerate(recs, start=first):
                self.apply_event(EventRecord(seq, *r))

        self._journal(entries, apply)

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
            return [ch.copy() for ch in self.channels], self.applied_seq

    # -- persistence -------------------------------------------------------------------

    def save(self) -> None:
        """Write a snapshot atomically (a crash mid-save leaves the previous one loadable).

        One process at a time (the directory's lock, exclusive): it first applies the journal's
        tail, and the snapshot records the sequence applied; then the journal's item operations
        up to there are compacted away.
        """
        with self.write_lock, self.lock.exclusive():
            self._apply_tail(dir_locked=True)
            seq = self.applied_seq

            stats: dict[str, Any] = {}

            def write(folder: Path) -> None:
                stats.update(save_statistics(folder, self.channels, self._last_row, seq))
                (folder / "catalog").mkdir()
                self.catalog.save(folder / "catalog")
                np.save(folder / "vectors.npy", self.vectors[: self.catalog.num_rows], allow_pickle=False)
                self.hashes.save(folder / HASHES_FILE, self.catalog.num_rows)
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
                "embedding_backend": self.embedding_backend,
                "hashes_file": HASHES_FILE,
                "field_kinds": dict(self.field_kinds),
                "items": len(self.catalog),
                "users": len(self.users),
                "statistics": stats,  # filled by write(): everything up to seq observed
            }
            final = self._generations.commit(write, meta)
            # The file now holds exactly these vectors: map it, so memory holds only pages in use.
            self.vectors = _map_vectors(final / "vectors.npy", self.dim)
            self.journal.truncate_item_ops(seq)
            self.snapshot_seq = seq

    def close(self) -> None:
        if self.index is not None:
            self.index.close()  # a background compaction in flight is cancelled and waited for
        if self.journal is not None:
            self.journal.close()
