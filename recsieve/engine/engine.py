"""``Engine``: the wiring of catalog, embedder, vector index, user store, recall and re-ranker.

An engine lives in a directory::

    DIR/recsieve.toml      settings (EngineConfig)
    DIR/journal.sqlite     write-ahead journal of events and item changes (SQLite, WAL)
    DIR/MANIFEST.json      points at the current snapshot generation
    DIR/gen-NNNNNNNN/      catalog, vectors, index, users — written atomically by ``save``

Every write is journaled before it changes memory; ``open`` loads the snapshot and replays
the journal after it, so nothing acknowledged is lost even without ``save``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsieve.catalog import Catalog, content_hash, read_items
from recsieve.embedding import Embedder, SentenceTransformerEmbedder
from recsieve.engine.cache import MemoryCache, RedisCache, ResultCache, ScoreCache, result_key
from recsieve.engine.config import CONFIG_FILE, EngineConfig
from recsieve.engine.journal import EventRecord, ItemOp, Journal
from recsieve.engine.nearline import NearlineRefresher
from recsieve.engine.ranker import RANKER_FILE, RankingHead, candidate_features, feature_names
from recsieve.engine.recall import (
    PopularityChannel,
    RecallChannel,
    RecallRequest,
    TransitionsChannel,
    VectorChannel,
    fuse,
)
from recsieve.engine.users import UserStore, UserView
from recsieve.errors import (
    InvalidInputError,
    StoreError,
    UnknownItemError,
)
from recsieve.filters import Filter, parse_filter
from recsieve.indexes._metadata import kind_of
from recsieve.indexes.base import SearchParams, VectorIndex
from recsieve.storage import GenerationDir, atomic_write_text
from recsieve.types import Candidates, Event, Item, Recommendation
from recsieve.vectors import as_matrix, normalize

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.rerankers.base import Reranker

__all__ = ["Engine", "UpsertReport", "build_index"]

log = logging.getLogger("recsieve")

#: Largest ``k`` a request may ask for.
MAX_K = 10_000
#: Longest instruction accepted, in characters.
MAX_INSTRUCTION = 2_000
#: Events may carry timestamps up to this far in the future (clock skew between hosts).
FUTURE_SLACK_S = 86_400.0


@dataclass(frozen=True)
class UpsertReport:
    """What an upsert did: items added, updated, unchanged, and how many texts were embedded."""

    added: int
    updated: int
    unchanged: int
    embedded: int
    seconds: float


def _index_factory(config: EngineConfig, dim: int, workdir: Path) -> VectorIndex:
    return _BACKENDS[config.backend][0](config, dim, workdir)


def _faiss_new(config: EngineConfig, dim: int, workdir: Path) -> VectorIndex:
    from recsieve.indexes.faiss_index import FaissIndex

    return FaissIndex(dim, kind=config.index, ef_search=config.ef_search, nprobe=config.nprobe)


def _faiss_load(folder: Path, workdir: Path) -> VectorIndex:
    from recsieve.indexes.faiss_index import FaissIndex

    return FaissIndex.load(folder)


def _lance_new(config: EngineConfig, dim: int, workdir: Path) -> VectorIndex:
    from recsieve.indexes.lance_index import LanceIndex

    kinds = {"flat": "none", "hnsw": "hnsw_sq", "ivf": "ivf_pq"}
    return LanceIndex(dim, index_type=kinds[config.index])


def _lance_load(folder: Path, workdir: Path) -> VectorIndex:
    from recsieve.indexes.lance_index import LanceIndex

    return LanceIndex.load(folder)


#: backend name -> (make a new index, load a saved one). The only place backends are named.
_BACKENDS = {"faiss": (_faiss_new, _faiss_load), "lance": (_lance_new, _lance_load)}

#: cache name -> factory. The only place cache backends are named.
_CACHES = {
    "memory": lambda c: MemoryCache(c.cache_entries, c.cache_mb << 20, c.cache_ttl_s),
    "redis": lambda c: RedisCache(c.redis_url, ttl_s=c.cache_ttl_s),
    "none": lambda c: None,
}
#: How many distinct recent requests of a hot user the near-line refresh recomputes.
_HOT_REQUESTS = 3


class Engine:
    """A real-time two-stage recommender over one engine directory.

    Build one with :meth:`create` or :meth:`open`. Thread-safe: many threads may call
    :meth:`recommend` and :meth:`search` while others :meth:`record` and upsert/remove items.
    """

    def __init__(
        self,
        directory: Path,
        config: EngineConfig,
        *,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        """Use :meth:`create` or :meth:`open`; this constructor wires an empty engine."""
        self.directory = Path(directory)
        self.config = config
        self._embedder = embedder
        self._given_reranker = reranker
        #: (ranking head, cross-encoder) serving now; replaced as one tuple, so a request reads a consistent pair
        self._models: tuple[RankingHead | None, Reranker | None] | None = None
        self._reranker_missing_logged = False
        self._write_lock = threading.RLock()
        self._store = GenerationDir(self.directory, "engine")
        self.catalog = Catalog(config.template) if config.template else Catalog()
        self._dim: int | None = None
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._hashes: dict[int, str] = {}
        #: metadata field -> the one kind it holds (number, bool, string), as the index enforces it
        self._field_kinds: dict[str, str] = {}
        self.index: VectorIndex | None = None
        self.users: UserStore | None = None
        self.journal: Journal | None = None
        self._snapshot_seq = 0
        self._instruction_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._last_row: dict[str, int] = {}
        self._channels: list[RecallChannel] = []
        self._cache: ResultCache | None = None
        self._scores = ScoreCache(config.score_cache_entries)
        self._refresher: NearlineRefresher | None = None
        self._hot: OrderedDict[str, OrderedDict[tuple, None]] = OrderedDict()
        self._hot_lock = threading.Lock()
        self.model_version = _model_version(config, None)
        self._closed = False

    def _start_serving(self) -> None:
        """Create the result cache and the near-line refresher (after state is loaded)."""
        self._cache = _CACHES[self.config.cache](self.config)
        if self._cache is not None and self.config.refresh_threads > 0:
            self._refresher = NearlineRefresher(
                self._refresh_user, threads=self.config.refresh_threads, max_queue=self.config.refresh_queue
            )

    # -- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | Path,
        config: EngineConfig | None = None,
        *,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
    ) -> Engine:
        """Create a new, empty engine in ``directory`` (which must be empty or absent)."""
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StoreError(f"engine directory {directory} exists and is not empty; use Engine.open")
        directory.mkdir(parents=True, exist_ok=True)
        config = config or EngineConfig()
        engine = cls(directory, config, embedder=embedder, reranker=reranker)
        dim = engine.embedder.dim
        engine._init_parts(dim)
        atomic_write_text(directory / CONFIG_FILE, config.to_toml())
        engine.save()
        engine._start_serving()
        return engine

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
        config: EngineConfig | None = None,
    ) -> Engine:
        """Open an engine directory: load the last snapshot, then replay the journal after it.

        ``config`` overrides the saved settings for this session (it is not written back).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise StoreError(f"engine directory {directory} does not exist or is not a directory")
        config = config or EngineConfig.load(directory / CONFIG_FILE)
        engine = cls(directory, config, embedder=embedder, reranker=reranker)
        try:
            engine._load()
        except BaseException:
            engine.close()  # a failed open leaves no journal connection behind
            raise
        engine._start_serving()
        return engine

    def _init_parts(self, dim: int) -> None:
        self._dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self.index = _index_factory(self.config, dim, self.directory)
        self.users = self._new_user_store(dim)
        self.journal = Journal(self.directory / "journal.sqlite", dim)
        self._build_channels()

    def _new_user_store(self, dim: int) -> UserStore:
        return UserStore(dim, recent_window=self.config.recent_window, half_life_days=self.config.half_life_days)

    def _build_channels(self) -> None:
        self._channels = self._make_channels()

    def _make_channels(self) -> list[RecallChannel]:
        """Fresh recall channels as the config names them (statistics empty)."""
        makers = {
            "vector": lambda: VectorChannel(
                self.index, SearchParams(ef_search=self.config.ef_search, nprobe=self.config.nprobe)
            ),
            "transitions": TransitionsChannel,
            "popularity": lambda: PopularityChannel(lambda: self.catalog.num_rows),
        }
        return [makers[name]() for name in self.config.channels]

    def _load(self) -> None:
        folder, meta = self._store.open()
        dim = int(meta["dim"])
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
        self._dim = dim
        self.catalog = Catalog.load(folder / "catalog")
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        self._vectors = as_matrix(vectors, dim, "vectors.npy") if vectors.size else np.zeros((0, dim), np.float32)
        hashes = meta.get("hashes_file")
        if hashes:
            import json

            self._hashes = {int(k): v for k, v in json.loads((folder / hashes).read_text("utf-8")).items()}
        self._field_kinds = dict(meta.get("field_kinds") or {})
        for item in self.catalog:  # snapshots written before field kinds were saved
            self._note_field_kinds(item)
        self.index = _BACKENDS[self.config.backend][1](folder / "index", self.directory)
        if self.index.dim != dim:
            raise StoreError(f"{self.directory}: index dimension {self.index.dim} != snapshot dimension {dim}")
        self.users = self._new_user_store(dim)
        self.users.load(folder / "users")
        self._snapshot_seq = int(meta["seq"])
        if self._snapshot_seq > 0 and not (self.directory / "journal.sqlite").exists():
            raise StoreError(
                f"{self.directory}: journal.sqlite is missing but the snapshot needs its entries up to "
                f"{self._snapshot_seq}; restore journal.sqlite (a new one is not created)"
            )
        self.journal = Journal(self.directory / "journal.sqlite", dim)
        if self.journal.last_seq < self._snapshot_seq:
            raise StoreError(
                f"{self.directory}: the journal ends at {self.journal.last_seq} but the snapshot needs "
                f"{self._snapshot_seq}; journal.sqlite was replaced or truncated"
            )
        self._build_channels()
        for entry in self.journal.replay(self._snapshot_seq):
            if isinstance(entry, ItemOp):
                if entry.op == "upsert":
                    items = [Item(**_item_kwargs(d)) for d in entry.payload]
                    self._apply_upsert(items, entry.vectors)
                else:
                    self._apply_remove(list(entry.payload))
            else:
                self._apply_event(entry, replay_stats=False)
        self._rebuild_statistics()

    def _rebuild_statistics(self) -> None:
        """Recompute recall statistics (transitions, popularity) from every journaled event."""
        self._last_row = {}
        for rec in self.journal.events():
            positive = self.users.event_weight(rec.kind, rec.weight) > 0
            prev = self._last_row.get(rec.user_id)
            for ch in self._channels:
                ch.observe(prev, rec.row, positive)
            if positive:
                self._last_row[rec.user_id] = rec.row

    # -- lazily loaded models ----------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The bi-encoder (loaded on first use)."""
        if self._embedder is None:
            self._embedder = SentenceTransformerEmbedder(self.config.embedding_model)
        return self._embedder

    def _load_models(self, config: EngineConfig) -> tuple[RankingHead | None, Reranker | None]:
        """The ranking head and cross-encoder of the folder ``config`` names (nothing is assigned;
        :func:`_cross_encoder` decides whether the ordering reads that cross-encoder)."""
        path = self._model_dir(config)
        if path is None:
            return None, None
        from recsieve.rerankers.cross_encoder import open_cross_encoder

        def cross_encoder(folder: Path) -> Reranker:
            return open_cross_encoder(folder, backend=config.ce_backend, max_length=config.ce_max_length or None)

        if not (path / RANKER_FILE).exists():
            return None, cross_encoder(path)
        head = RankingHead.load(path)
        expected = self.feature_names()
        if head.features != expected:
            raise StoreError(
                f"reranker_model {config.reranker_model!r} was trained on features {head.features}, "
                f"but this engine's channels give {expected}; retrain it or restore the channels"
            )
        return head, cross_encoder(path / head.cross_encoder) if head.cross_encoder else None

    def _ensure_models(self) -> None:
        if self._models is None:
            with self._write_lock:
                if self._models is None:
                    head, reranker = self._load_models(self.config)
                    self._models = (head, _cross_encoder(self.config, head, self._given_reranker or reranker))

    @property
    def ranking_head(self) -> RankingHead | None:
        """The trained ranking head (a ``reranker_model`` folder with ``ranker.json``), else ``None``."""
        return self._serving()[0]

    @property
    def reranker(self) -> Reranker | None:
        """The cross-encoder the ordering uses, or ``None`` (recall-only, or the ``fast`` tier).

        With a ranking head, the cross-encoder is its ``cross-encoder/`` sub-folder, used in the
        ``full`` tier when its fitted blend weight is positive.
        """
        return self._serving()[1]

    def _serving(self) -> tuple[RankingHead | None, Reranker | None]:
        self._ensure_models()
        assert self._models is not None
        return self._models

    def _model_dir(self, config: EngineConfig | None = None) -> Path | None:
        """The model folder ``config`` (default: the serving one) names, or ``None``."""
        config = config or self.config
        if not config.reranker_model:
            return None
        path = Path(config.reranker_model)
        return path if path.is_absolute() else self.directory / path

    def use_model(self, path: str | Path | None, *, tier: str | None = None, persist: bool = False,
                  reranker: Reranker | None = None) -> None:
        """Serve with the model folder ``path`` (``None``: recall-only) in ``tier`` from now on.

        ``reranker`` serves in place of the folder's cross-encoder (for instance one of
        :func:`~recsieve.rerankers.levers.lever_rerankers`); by default the re-ranker given
        when the engine was opened, if any, else the folder's own.

        The new model is loaded completely before it replaces the old one, so a request never
        sees half of it and a model that fails to load leaves the old one serving. Cached
        results of the old model are not served again (the model version is in their keys).
        ``persist=True`` also rewrites the engine directory's config file (atomically) to name
        it, so a reopened engine serves it; otherwise the file is not changed.
        """
        self._check_open()
        config = replace(self.config, reranker_model="" if path is None else str(path),
                         rerank_tier=self.config.rerank_tier if tier is None else tier)
        head, own = self._load_models(config)
        chosen = _cross_encoder(config, head, reranker or self._given_reranker or own)
        with self._write_lock:
            if persist:
                atomic_write_text(self.directory / CONFIG_FILE, config.to_toml())
            self.config = config
            self._models = (head, chosen)
            given = chosen is not None and chosen is not own
            self.model_version = _model_version(config, head) + (f":{chosen.model_id}" if given else "")

    @property
    def dim(self) -> int:
        """Dimension of the item vectors."""
        assert self._dim is not None
        return self._dim

    # -- items -------------------------------------------------------------------------

    def upsert_items(self, items: Iterable[Item] | str | Path, *, show_progress: bool | None = None) -> UpsertReport:
        """Add or replace items (an iterable of :class:`Item` or a JSONL/CSV/Parquet path).

        Items whose rendered text did not change are not re-embedded. The whole batch is
        validated first; on any error nothing changes. Durable when this returns; recallable at once.
        """
        t0 = time.perf_counter()
        self._check_open()
        if isinstance(items, (str, Path)):
            items = read_items(items)
        items = self.catalog.validate(list(items))
        texts = [self.catalog.render(it) for it in items]
        hashes = [content_hash(t) for t in texts]
        with self._write_lock:
            self._check_field_kinds(items)  # the index would refuse these after they were journaled
            added = updated = unchanged = 0
            vectors = np.zeros((len(items), self.dim), dtype=np.float32)
            todo = []
            for i, (it, h) in enumerate(zip(items, hashes)):
                if it.id in self.catalog:
                    row = self.catalog.row(it.id)
                    if self._hashes.get(row) == h:
                        vectors[i] = self._vectors[row]
                        same = self.catalog.is_current(it)
                        unchanged += same
                        updated += not same
                        continue
                    updated += 1
                else:
                    added += 1
                todo.append(i)
            if todo:
                vectors[todo] = self.embedder.embed([texts[i] for i in todo], show_progress=show_progress)
            if items and (added or updated):
                self.journal.append_item_op("upsert", [it.to_dict() for it in items], vectors)
                self._apply_upsert(items, vectors, hashes)
        return UpsertReport(added, updated, unchanged, len(todo), time.perf_counter() - t0)

    def _check_field_kinds(self, items: Sequence[Item]) -> None:
        """Each metadata field holds one kind of value (number, bool or string) for good."""
        seen = dict(self._field_kinds)
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
            self._field_kinds.setdefault(key, kind_of(value))

    def _apply_upsert(self, items: Sequence[Item], vectors: np.ndarray, hashes: Sequence[str] | None = None) -> None:
        if hashes is None:
            hashes = [content_hash(self.catalog.render(it)) for it in items]
        rows = self.catalog.upsert(items)
        need = int(rows.max()) + 1 if rows.size else 0
        if need > self._vectors.shape[0]:
            grown = np.zeros((max(need, 2 * self._vectors.shape[0]), self.dim), dtype=np.float32)
            grown[: self._vectors.shape[0]] = self._vectors
            self._vectors = grown
        self._vectors[rows] = vectors
        for r, h in zip(rows.tolist(), hashes):
            self._hashes[r] = h
        self.index.upsert(rows, vectors, [dict(it.metadata) for it in items])
        for it in items:
            self._note_field_kinds(it)

    def remove_items(self, ids: Iterable[str]) -> int:
        """Remove items by id; unknown ids raise :class:`UnknownItemError` and nothing changes."""
        self._check_open()
        ids = list(ids)
        for i, item_id in enumerate(ids):
            if not isinstance(item_id, str):
                raise InvalidInputError(f"ids[{i}]", item_id, "item ids are strings")
        with self._write_lock:
            for i, item_id in enumerate(ids):
                if item_id not in self.catalog:
                    raise UnknownItemError(f"ids[{i}]", item_id)
            unique = list(dict.fromkeys(ids))
            if unique:
                self.journal.append_item_op("remove", unique)
                self._apply_remove(unique)
        return len(unique)

    def _apply_remove(self, ids: list[str]) -> None:
        rows = self.catalog.rows(ids)
        self.index.remove(rows)  # first the index, so a concurrent search never sees a dangling row
        self.catalog.remove(ids)

    # -- events ------------------------------------------------------------------------

    def record(self, events: Event | Iterable[Event]) -> int:
        """Record user events; reflected by the very next :meth:`recommend` for those users.

        The batch is validated first (unknown items, timestamps more than a day in the future are
        errors naming the event); it is journaled durably before any state changes. Returns the
        number of events recorded.
        """
        self._check_open()
        batch = [events] if isinstance(events, Event) else list(events)
        now = time.time()
        recs = []
        with self._write_lock:
            for i, ev in enumerate(batch):
                ts = self.check_event(ev, f"events[{i}]", now)
                recs.append((ev.user_id, ev.item_id, self.catalog.row(ev.item_id), ev.kind, ts, ev.weight, ev.text))
            if not recs:
                return 0
            last = self.journal.append_events(recs)
            first = last - len(recs) + 1
            for seq, r in enumerate(recs, start=first):
                self._apply_event(EventRecord(seq, *r))
        if self._refresher is not None:
            t = time.perf_counter()
            for user in dict.fromkeys(r[0] for r in recs):
                if user in self._hot:
                    self._refresher.submit(user, t)
        return len(recs)

    def check_event(self, event: Event, field: str = "event", now: float | None = None) -> float:
        """Raise what :meth:`record` would raise for ``event`` (naming ``field``); return its timestamp.

        Checks: an :class:`Event`, of an item in the catalog, at most a day in the future, with
        ``text`` either ``None`` or non-empty and at most 2,000 characters. Changes nothing.
        """
        now = time.time() if now is None else now
        if not isinstance(event, Event):
            raise InvalidInputError(field, type(event).__name__, "expected a recsieve.Event")
        if event.item_id not in self.catalog:
            raise UnknownItemError(f"{field}.item_id", event.item_id)
        ts = now if event.ts is None else float(event.ts)
        if ts > now + FUTURE_SLACK_S:
            raise InvalidInputError(f"{field}.ts", event.ts, "more than a day in the future")
        if event.text is not None:
            if not isinstance(event.text, str) or not event.text.strip():
                raise InvalidInputError(f"{field}.text", event.text, "must be non-empty text when given (or None)")
            if len(event.text) > MAX_INSTRUCTION:
                raise InvalidInputError(f"{field}.text", event.text[:40], f"longer than {MAX_INSTRUCTION} characters")
        return ts

    def _apply_event(self, rec: EventRecord, replay_stats: bool = True) -> None:
        self.users.apply(rec.user_id, rec.row, self._vectors[rec.row], rec.kind, rec.ts, rec.weight, rec.text)
        if replay_stats:
            positive = self.users.event_weight(rec.kind, rec.weight) > 0
            prev = self._last_row.get(rec.user_id)
            for ch in self._channels:
                ch.observe(prev, rec.row, positive)
            if positive:
                self._last_row[rec.user_id] = rec.row

    # -- queries -----------------------------------------------------------------------

    def embed_text(self, text: str, field: str = "text") -> np.ndarray:
        """Embed one query text (cached), validated: non-empty and at most 2,000 characters."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(field, text, "must be a non-empty string")
        if len(text) > MAX_INSTRUCTION:
            raise InvalidInputError(field, text[:40], f"longer than {MAX_INSTRUCTION} characters")
        key = " ".join(text.split())
        vec = self._instruction_cache.get(key)
        if vec is None:
            vec = self.embedder.embed([key])[0]
            self._instruction_cache[key] = vec
            while len(self._instruction_cache) > 1024:
                self._instruction_cache.popitem(last=False)
        return vec

    def search(self, text: str, k: int = 10, *, filters: str | Mapping[str, Any] | Filter | None = None) -> list[tuple[str, float]]:
        """Items nearest to ``text`` (no user involved): ``[(item_id, score), ...]``."""
        self._check_open()
        k = _check_k(k)
        flt = parse_filter(filters)
        query = self.embed_text(text, "text")
        scores, ids = self.index.search(query.reshape(1, -1), k, filter=flt)
        out = []
        for s, r in zip(scores[0].tolist(), ids[0].tolist()):
            if r >= 0 and self.catalog.is_live(r):
                out.append((self.catalog.item_id(r), float(s)))
        return out

    def recall(
        self,
        user_id: str,
        *,
        n: int | None = None,
        instruction: str | None = None,
        filters: str | Mapping[str, Any] | Filter | None = None,
    ) -> Candidates:
        """The recall stage alone: fused candidates for a user (rows and fused scores)."""
        self._check_open()
        view = self.users.get(_check_user(user_id))
        flt = parse_filter(filters)
        inst = self.embed_text(instruction, "instruction") if instruction is not None else None
        return self._recall(view, n or self.config.recall_n, inst, flt).cands

    def history_view(self, rows: Sequence[int], kinds: Sequence[str] | None = None,
                     times: Sequence[float] | None = None, user_id: str = "(history)") -> UserView:
        """The view a user with this history would have (nothing is recorded or journaled).

        Used to recall candidates for a point in the past, e.g. hard negatives for training.
        """
        store = self._new_user_store(self.dim)
        for i, row in enumerate(rows):
            kind = kinds[i] if kinds is not None else "click"
            ts = float(times[i]) if times is not None else float(i)
            store.apply(user_id, int(row), self._vectors[int(row)], kind, ts, None, None)
        view = store.get(user_id)
        assert view is not None or not rows
        return view

    def recall_view(self, view: UserView | None, n: int, *, instruction: str | None = None,
                    filters: str | Mapping[str, Any] | Filter | None = None) -> Candidates:
        """The recall stage for a given user view (see :meth:`history_view`)."""
        inst = self.embed_text(instruction, "instruction") if instruction is not None else None
        return self._recall(view, n, inst, parse_filter(filters)).cands

    def recall_stage(self, view: UserView | None, n: int | None = None, *, instruction: str | None = None,
                     filters: str | Mapping[str, Any] | Filter | None = None,
                     statistics: Sequence[RecallChannel] | None = None) -> Recalled:
        """Recall for a user view with everything the ordering stage reads (:class:`Recalled`).

        ``statistics``: recall channels to use instead of the live ones (for instance a copy
        from :meth:`statistics` that leaves one user's steps out, when building training data).
        """
        inst = self.embed_text(instruction, "instruction") if instruction is not None else None
        return self._recall(view, n or self.config.recall_n, inst, parse_filter(filters), statistics)

    def order_stage(self, view: UserView | None, recalled: Recalled, instruction: str | None = None, *,
                    rerank: bool = True) -> np.ndarray:
        """Final scores of ``recalled``'s candidates (in recall order) as :meth:`recommend` orders them."""
        return self._order(view, recalled, instruction, rerank=rerank)

    def statistics(self) -> tuple[list[RecallChannel], int]:
        """A copy of the live recall statistics (channels) and the journal sequence they include,
        taken at one moment under the write lock."""
        with self._write_lock:
            return [ch.copy() for ch in self._channels], self.journal.last_seq

    def new_statistics(self) -> list[RecallChannel]:
        """Fresh recall channels as the config names them, with empty statistics."""
        return self._make_channels()

    @property
    def model_dir(self) -> Path | None:
        """The serving model folder (absolute), or ``None`` when ordering by recall only."""
        return self._model_dir()

    def item_text(self, row: int) -> str:
        """The rendered text of the item at ``row`` (its title if it was removed meanwhile)."""
        return self._item_text(row)

    def _query_vector(self, view: UserView | None, instruction: np.ndarray | None) -> np.ndarray | None:
        cfg = self.config
        q = np.zeros(self.dim, dtype=np.float64)
        if view is not None:
            if view.profile is not None:
                norm = np.linalg.norm(view.profile)
                q += cfg.profile_weight * view.profile / norm
            recent = view.recent[-cfg.short_term_events :]
            if recent:
                short = sum(e.weight * self._vectors[e.row].astype(np.float64) for e in recent)
                norm = np.linalg.norm(short)
                if norm > 1e-9:
                    q += cfg.recent_weight * short / norm
        if instruction is not None:
            q += cfg.instruction_weight * instruction
        if np.linalg.norm(q) < 1e-9:
            return None
        return normalize(q, self.dim, "query")[0]

    def _recall(self, view: UserView | None, n: int, instruction: np.ndarray | None, flt: Filter | None,
                channels: Sequence[RecallChannel] | None = None) -> Recalled:
        """Recall with the engine's channels (or ``channels``, e.g. statistics that leave a step out)."""
        channels = self._channels if channels is None else channels
        exclude = view.consumed if (view is not None and self.config.exclude_consumed) else frozenset()
        catalog = self.catalog

        def accept(row: int) -> bool:
            if not catalog.is_live(row):
                return False
            return flt is None or flt.matches(catalog.metadata(row))

        request = RecallRequest(
            n=n,
            query=self._query_vector(view, instruction),
            recent_rows=tuple(e.row for e in view.recent if e.weight > 0) if view else (),
            filter=flt,
            exclude=exclude,
            accept=accept,
        )
        lists = [ch.recall(request) for ch in channels]
        return Recalled(fuse(lists, self.config.channel_weights, n), lists, channels, instruction, request)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        instruction: str | None = None,
        filters: str | Mapping[str, Any] | Filter | None = None,
    ) -> list[Recommendation]:
        """Recommend ``k`` items for ``user_id``, optionally following a plain-words ``instruction``
        and restricted by metadata ``filters`` (``'price < 30 and category == "books"'`` or a mapping
        of equalities). An unknown user gets a cold-start list (instruction and popularity).
        """
        self._check_open()
        k = _check_k(k)
        user_id = _check_user(user_id)
        flt = parse_filter(filters)
        if instruction is not None:
            self.embed_text(instruction, "instruction")  # validate before anything else
        request = (k, instruction, flt.text if flt else None)
        view = self.users.get(user_id)
        key = self._cache_key(user_id, view, request)
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self._remember(user_id, request)
                return hit
        # While a near-line refresh of this user is on its way, answer fresh but fast (recall
        # ordering, no re-ranker) and leave caching to the refresh.
        pending = self._refresher is not None and self._refresher.is_pending(user_id)
        recs = self._compute(view, request, flt, cross_encoder=not pending)
        if self._cache is not None and not pending:
            self._cache.put(key, recs)
        self._remember(user_id, request)
        return recs

    def _cache_key(self, user_id: str, view: UserView | None, request: tuple) -> str:
        version = 0 if view is None else view.version
        return result_key(user_id, version, self.catalog.version, self.model_version, *request)

    def _remember(self, user_id: str, request: tuple) -> None:
        """Track hot users and their recent distinct requests (for near-line refresh)."""
        with self._hot_lock:
            reqs = self._hot.get(user_id)
            if reqs is None:
                reqs = self._hot[user_id] = OrderedDict()
            self._hot.move_to_end(user_id)
            reqs[request] = None
            reqs.move_to_end(request)
            while len(reqs) > _HOT_REQUESTS:
                reqs.popitem(last=False)
            while len(self._hot) > self.config.cache_entries:
                self._hot.popitem(last=False)

    def _refresh_user(self, user_id: str) -> None:
        """Near-line job: recompute a hot user's recent requests and store them in the cache."""
        with self._hot_lock:
            requests = list(self._hot.get(user_id, ()))
        for request in requests:
            view = self.users.get(user_id)
            key = self._cache_key(user_id, view, request)  # before computing: a write meanwhile makes it stale
            recs = self._compute(view, request, parse_filter(request[2]), cross_encoder=True)
            self._cache.put(key, recs, force=True)

    def _compute(self, view: UserView | None, request: tuple, flt: Filter | None, *,
                 cross_encoder: bool) -> list[Recommendation]:
        k, instruction, _ = request
        inst_vec = self.embed_text(instruction, "instruction") if instruction is not None else None
        recalled = self._recall(view, max(self.config.recall_n, k), inst_vec, flt)
        cands = recalled.cands
        if len(cands) == 0:
            return []
        final = self._order(view, recalled, instruction, cross_encoder=cross_encoder)
        out: list[Recommendation] = []
        for i in np.argsort(-final, kind="stable").tolist():
            row = int(cands.rows[i])
            if not self.catalog.is_live(row):  # removed while this request ran
                continue
            out.append(self._explain(view, inst_vec, row, float(final[i]), float(cands.scores[i]), len(out) + 1, instruction))
            if len(out) == k:
                break
        return out

    def rank(self, view: UserView | None, n: int | None = None, *, instruction: str | None = None,
             filters: str | Mapping[str, Any] | Filter | None = None, rerank: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Both stages for a user view, no cache: ``(rows, final scores)`` of all recalled candidates, best first.

        ``rerank=False`` gives the recall-only ordering. Used by evaluation and benchmarks.
        """
        inst = self.embed_text(instruction, "instruction") if instruction is not None else None
        recalled = self._recall(view, n or self.config.recall_n, inst, parse_filter(filters))
        cands = recalled.cands
        if len(cands) == 0:
            return cands.rows, cands.scores
        final = self._order(view, recalled, instruction, rerank=rerank)
        order = np.argsort(-final, kind="stable")
        return cands.rows[order], final[order].astype(np.float32)

    def features(self, view: UserView | None, recalled: Recalled) -> np.ndarray:
        """The ranking head's features of recalled candidates (see :mod:`recsieve.engine.ranker`)."""
        pop = next((c for c in recalled.channels if isinstance(c, PopularityChannel)), None)
        rows = recalled.cands.rows
        counts = np.array([pop.share(int(r)) for r in rows], np.float32) if pop else np.zeros(len(rows), np.float32)
        return candidate_features(
            recalled.cands, recalled.lists, self._vectors,
            profile=None if view is None else view.profile,
            recent_rows=[e.row for e in view.recent if e.weight > 0] if view is not None else [],
            instruction=recalled.instruction, popularity=counts, short_term=self.config.short_term_events,
            extra=np.concatenate([ch.features(recalled.request, rows) for ch in recalled.channels], axis=1),
        )

    def feature_names(self) -> tuple[str, ...]:
        """The ranking head's feature layout for this engine's channels."""
        return feature_names([c.name for c in self._channels], {c.name: c.extra_features for c in self._channels})

    def _order(self, view: UserView | None, recalled: Recalled, instruction: str | None, *, rerank: bool = True,
               cross_encoder: bool = True) -> np.ndarray:
        """Final scores of candidates: the ranking head's (plus the cross-encoder's on the top
        ``rerank_n`` in the ``full`` tier), or a bare cross-encoder's, else recall order.
        ``cross_encoder=False`` (a refresh is pending): the head alone, never a cross-encoder."""
        cands = recalled.cands
        n = len(cands)
        recall_part = 1.0 - np.arange(n, dtype=np.float32) / max(n, 1)  # rank-normalised recall score
        head, reranker = self._serving() if rerank else (None, None)
        if not cross_encoder:
            reranker = None
        if head is not None:
            return self._head_order(view, recalled, instruction, head, reranker)
        if reranker is None:
            if self.config.reranker_model == "" and not self._reranker_missing_logged:
                log.info("recsieve: no trained re-ranker configured; ordering by recall only")
                self._reranker_missing_logged = True
            return recall_part
        m = min(n, self.config.rerank_n)
        scores = self._rerank_scores(reranker, self.render_context(view, instruction), cands.rows[:m])
        final = np.full(n, -np.inf, dtype=np.float32)
        # Re-ranked candidates always stay above the ones the re-ranker did not read.
        final[:m] = scores + self.config.blend * recall_part[:m]
        final[m:] = scores.min() - 1.0 - np.arange(n - m, dtype=np.float32) if m else recall_part[m:]
        return final

    def _head_order(self, view: UserView | None, recalled: Recalled, instruction: str | None,
                    head: RankingHead, reranker: Reranker | None) -> np.ndarray:
        fast = head.score(self.features(view, recalled))
        if reranker is None:
            return fast
        m = min(len(fast), self.config.rerank_n, head.blend_top or len(fast))  # as many as the weight was fitted on
        top = np.argsort(-fast, kind="stable")[:m]
        text = self._rerank_scores(reranker, self.render_context(view, instruction), recalled.cands.rows[top])
        final = fast.copy()
        final[top] += head.blend * text
        # Candidates the cross-encoder did not read stay below those it did, in the head's order.
        rest = np.ones(len(fast), bool)
        rest[top] = False
        if rest.any():
            final[rest] = final[top].min() - 1.0 - (fast[rest].max() - fast[rest])
        return final

    def _rerank_scores(self, reranker: Reranker, context: str, rows: np.ndarray) -> np.ndarray:
        """Re-ranker scores of ``rows`` for ``context``; only pairs missing from the score cache are scored."""
        ckey = ScoreCache.context_key(self.model_version + "\x00" + context)
        keys = [(int(r), self._hashes.get(int(r), "")) for r in rows]
        cached = self._scores.lookup(ckey, keys)
        todo = [i for i, v in enumerate(cached) if v is None]
        scores = np.array([0.0 if v is None else v for v in cached], dtype=np.float32)
        if todo:
            from recsieve.rerankers.base import check_scores

            texts = [self._item_text(keys[i][0]) for i in todo]
            fresh = check_scores(reranker.score(context, texts), len(todo))
            scores[todo] = fresh
            self._scores.store(ckey, [keys[i] for i in todo], fresh.tolist())
        return scores

    def _item_text(self, row: int) -> str:
        try:
            return self.catalog.text(row)
        except UnknownItemError:  # removed while this request ran; dropped from the answer later
            return self.catalog.title(row)

    def render_context(self, view: UserView | None, instruction: str | None, now: float | None = None) -> str:
        """The user-context text the re-ranker reads (same rendering in training and serving)."""
        from recsieve.rerankers.context import ContextEvent, render_context

        now = time.time() if now is None else now
        events = []
        if view is not None:
            for e in reversed(view.recent):
                events.append(ContextEvent(self.catalog.title(e.row), e.kind, max(0.0, now - e.ts), e.text))
        events.reverse()
        return render_context(events, instruction)

    def _explain(
        self, view: UserView | None, inst_vec: np.ndarray | None, row: int, score: float, recall_score: float,
        rank: int, instruction: str | None,
    ) -> Recommendation:
        vec = self._vectors[row]
        pop = next((c for c in self._channels if isinstance(c, PopularityChannel)), None)
        reason = "popular right now" if pop is not None and pop.count(row) > 0 else "from the catalog (no signal yet)"
        best = -math.inf
        if view is not None:
            for e in view.recent:
                if e.weight <= 0:
                    continue
                sim = float(vec @ self._vectors[e.row])
                if sim > best:
                    best, reason = sim, f"because you {_PAST.get(e.kind, e.kind)} {self.catalog.title(e.row)!r}"
        if inst_vec is not None:
            sim = float(vec @ inst_vec)
            if sim >= best:
                reason = f"matches your request {instruction!r}"
        return Recommendation(self.catalog.item_id(row), score, recall_score, rank, reason)

    def learn(self, *, steps_per_user: int = 3, replay: int = 2000, epochs: int = 10, users: int | None = None,
              budget_s: float | None = None) -> dict[str, Any]:
        """Update the ranking head from events recorded since it was trained, mixed with a
        replay of older examples, and switch to it atomically (see :mod:`recsieve.engine.learn`);
        returns the update's report (``updated``: whether the head was replaced)."""
        from recsieve.engine.learn import learn

        self._check_open()
        return learn(self, steps_per_user=steps_per_user, replay=replay, epochs=epochs, users=users,
                     budget_s=budget_s)

    # -- persistence -------------------------------------------------------------------

    def save(self) -> None:
        """Write a snapshot atomically (a crash mid-save leaves the previous one loadable)."""
        self._check_open()
        import json

        with self._write_lock:
            seq = self.journal.last_seq

            def write(folder: Path) -> None:
                (folder / "catalog").mkdir()
                self.catalog.save(folder / "catalog")
                np.save(folder / "vectors.npy", self._vectors[: self.catalog.num_rows], allow_pickle=False)
                (folder / "hashes.json").write_text(json.dumps({str(k): v for k, v in self._hashes.items()}), "utf-8")
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
                "field_kinds": dict(self._field_kinds),
                "items": len(self.catalog),
                "users": len(self.users),
            }
            self._store.commit(write, meta)
            self.journal.truncate_item_ops(seq)
            self._snapshot_seq = seq

    def stats(self) -> dict[str, Any]:
        """Counts describing the engine: items, users, journal, index, caches and near-line refresh."""
        return {
            "cache": self._cache.stats() if self._cache is not None else None,
            "score_cache": self._scores.stats(),
            "refresh": self._refresher.stats() if self._refresher is not None else None,
            "hot_users": len(self._hot),
            "items": len(self.catalog),
            "users": len(self.users),
            "journal_seq": self.journal.last_seq,
            "snapshot_seq": self._snapshot_seq,
            "index": {"backend": self.config.backend, "kind": self.config.index, "size": len(self.index), "dim": self.dim},
            "reranker": self.config.reranker_model or None,
        }

    def close(self) -> None:
        """Close the journal. Unsaved changes are safe in the journal and replayed on open."""
        if not self._closed:
            self._closed = True
            if self._refresher is not None:
                self._refresher.close(drain=False)
            if self._cache is not None:
                self._cache.close()
            if self.journal is not None:
                self.journal.close()

    def wait_refreshed(self, timeout: float | None = None) -> bool:
        """Block until queued near-line refreshes are done (for tests and benchmarks)."""
        return self._refresher is None or self._refresher.wait_idle(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("engine is closed")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PAST = {"view": "viewed", "click": "clicked", "cart": "added to cart", "purchase": "bought", "rating": "rated"}


@dataclass(frozen=True)
class Recalled:
    """What recall produced for one request: the fused candidates, each channel's own list,
    the channels that made them, and the instruction's embedding (if any)."""

    cands: Candidates
    lists: list[Candidates]
    channels: Sequence[RecallChannel]
    instruction: np.ndarray | None
    request: RecallRequest


def _cross_encoder(config: EngineConfig, head: RankingHead | None, reranker: Reranker | None) -> Reranker | None:
    """``reranker`` where the ordering reads one: always without a ranking head; with a head, in
    the ``full`` tier when the head's fitted blend weight is positive."""
    if head is not None and (config.rerank_tier != "full" or head.blend <= 0):
        return None
    return reranker


def _model_version(config: EngineConfig, head: RankingHead | None) -> str:
    """Names the model serving (keys of cached results and scores carry it)."""
    if not config.reranker_model:
        return "recall-only"
    stamp = head.report.get("trained_at", "") if head is not None else ""
    return f"{config.reranker_model}:{config.rerank_tier}:{config.ce_backend}:{config.ce_max_length}:{stamp}"


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError("k", k, "must be an integer")
    if not 1 <= int(k) <= MAX_K:
        raise InvalidInputError("k", k, f"must be between 1 and {MAX_K}")
    return int(k)


def _check_user(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInputError("user_id", user_id, "must be a non-empty string")
    return user_id


def _item_kwargs(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if "categories" in out:
        out["categories"] = tuple(out["categories"])
    return out


def build_index(
    items: str | Path | Iterable[Item],
    directory: str | Path,
    config: EngineConfig | None = None,
    *,
    embedder: Embedder | None = None,
    show_progress: bool | None = None,
) -> tuple[Engine, UpsertReport]:
    """Build a new engine directory from items, or update an existing one incrementally.

    An existing directory keeps its own settings (``config`` must then be ``None`` or agree
    on backend and index). Returns the open engine (saved) and what the upsert did.
    """
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        engine = Engine.open(directory, embedder=embedder)
        if config is not None and (config.backend, config.index) != (engine.config.backend, engine.config.index):
            engine.close()
            raise InvalidInputError(
                "backend/index", f"{config.backend}/{config.index}",
                f"{directory} already holds a {engine.config.backend}/{engine.config.index} index; "
                "build into a new directory to change it",
            )
    else:
        engine = Engine.create(directory, config, embedder=embedder)
    try:
        report = engine.upsert_items(items, show_progress=show_progress)
        engine.save()
    except BaseException:
        engine.close()
        raise
    return engine, report
