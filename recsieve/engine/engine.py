"""``Engine``: the facade applications use, over four rooms of their own.

- :mod:`recsieve.engine.store`: the state and its durability (snapshot, journal, replay);
- :mod:`recsieve.engine.pipeline`: query → recall → order → explain;
- :mod:`recsieve.engine.models`: the model slot (load, validate, atomic switch);
- :mod:`recsieve.engine.serving`: the result cache and the near-line refresh of hot users.

The facade validates input, takes the write lock around writes, and wires the rooms together.
Training (:mod:`recsieve.training`) uses the public methods here; nothing here imports it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsieve.catalog import Catalog
from recsieve.embedding import Embedder, SentenceTransformerEmbedder, check_backend, resolve_backend
from recsieve.engine.cache import ScoreCache
from recsieve.engine.checks import check_event, check_k, check_user
from recsieve.engine.config import CONFIG_FILE, EngineConfig
from recsieve.engine.constraints import Constraints, both
from recsieve.engine.journal import Journal
from recsieve.engine.models import ModelSlot, ServingModel
from recsieve.engine.pipeline import Pipeline, Recalled
from recsieve.engine.ranker import RankingHead
from recsieve.engine.recall import RecallChannel
from recsieve.engine.serving import HotUsers, Request
from recsieve.engine.store import Store
from recsieve.engine.users import UserStore, UserView
from recsieve.errors import InvalidInputError, StoreError, UnknownItemError
from recsieve.filters import Filter, parse_filter
from recsieve.indexes.base import VectorIndex
from recsieve.items_io import read_items
from recsieve.rendering import content_hash
from recsieve.storage import atomic_write_text
from recsieve.types import Candidates, Event, Item, Recommendation

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.rerankers.base import Reranker

__all__ = ["Engine", "UpsertReport", "build_index", "Recalled"]

Filters = str | Mapping[str, Any] | Filter | None


@dataclass(frozen=True)
class UpsertReport:
    """What an upsert did: items added, updated, unchanged, and how many texts were embedded."""

    added: int
    updated: int
    unchanged: int
    embedded: int
    seconds: float


class Engine:
    """A real-time two-stage recommender over one engine directory.

    Build one with :meth:`create` or :meth:`open`. Thread-safe: many threads may call
    :meth:`recommend` and :meth:`search` while others :meth:`record` and upsert/remove items.
    """

    def __init__(self, directory: Path, config: EngineConfig, *, embedder: Embedder | None = None,
                 reranker: Reranker | None = None) -> None:
        """Use :meth:`create` or :meth:`open`; this constructor wires an empty engine."""
        self.directory = Path(directory)
        self._embedder = embedder
        self._store = Store(self.directory, config)
        self._slot = ModelSlot(self.directory, config, self.feature_names, self._store, reranker)
        self._pipeline = Pipeline(self._store, self._slot, self._embed, ScoreCache(config.score_cache_entries))
        self._hot: HotUsers | None = None
        self._closed = False

    # -- construction ------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | Path, config: EngineConfig | None = None, *,
               embedder: Embedder | None = None, reranker: Reranker | None = None) -> Engine:
        """Create a new, empty engine in ``directory`` (which must be empty or absent)."""
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StoreError(f"engine directory {directory} exists and is not empty; use Engine.open")
        config = config or EngineConfig()
        if embedder is not None:  # refused before anything is written
            check_backend(embedder, resolve_backend(config.embedding_backend), f"the config of {directory}")
        directory.mkdir(parents=True, exist_ok=True)
        engine = cls(directory, config, embedder=embedder, reranker=reranker)
        engine._store.init_empty(engine.embedder.dim)
        atomic_write_text(directory / CONFIG_FILE, config.to_toml())
        engine.save()
        engine._start_serving()
        return engine

    @classmethod
    def open(cls, directory: str | Path, *, embedder: Embedder | None = None, reranker: Reranker | None = None,
             config: EngineConfig | None = None) -> Engine:
        """Open an engine directory: load the last snapshot, then replay the journal after it.

        ``config`` overrides the saved settings for this session (it is not written back).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise StoreError(f"engine directory {directory} does not exist or is not a directory")
        config = config or EngineConfig.load(directory / CONFIG_FILE)
        engine = cls(directory, config, embedder=embedder, reranker=reranker)
        try:
            engine._store.load()
            if embedder is not None:  # items and queries are embedded as the index's vectors were
                check_backend(embedder, engine._store.embedding_backend, f"the index in {directory}")
        except BaseException:
            engine.close()  # a failed open leaves no journal connection behind
            raise
        engine._start_serving()
        return engine

    def _start_serving(self) -> None:
        self._hot = HotUsers(self._store.config, self._refresh)

    # -- state, read-only views ----------------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        """The settings serving now (a model switch changes the re-rank settings)."""
        return self._slot.config

    @property
    def catalog(self) -> Catalog:
        return self._store.catalog

    @property
    def index(self) -> VectorIndex | None:
        return self._store.index

    @property
    def users(self) -> UserStore | None:
        return self._store.users

    @property
    def journal(self) -> Journal | None:
        return self._store.journal

    @property
    def dim(self) -> int:
        """Dimension of the item vectors."""
        assert self._store.dim
        return self._store.dim

    @property
    def embedder(self) -> Embedder:
        """The bi-encoder (loaded on first use)."""
        if self._embedder is None:
            store = self._store
            self._embedder = SentenceTransformerEmbedder(store.config.embedding_model, backend=store.embedding_backend)
        return self._embedder

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def catch_up(self) -> int:
        """Apply what other processes wrote to this directory since this one last looked, and
        serve a model another process switched to with ``use_model(persist=True)``. Every public
        read and write does this first (one cheap check when nothing is new). Returns the
        number of journal entries applied."""
        self._check_open()
        self._slot.sync()
        return self._store.catch_up()

    # -- models ------------------------------------------------------------------------

    @property
    def ranking_head(self) -> RankingHead | None:
        """The trained ranking head (a ``reranker_model`` folder with ``ranker.json``), else ``None``."""
        return self._slot.current().head

    @property
    def reranker(self) -> Reranker | None:
        """The cross-encoder the ordering uses, or ``None`` (recall-only, or the ``fast`` tier).

        With a ranking head, the cross-encoder is its ``cross-encoder/`` sub-folder, used in the
        ``full`` tier when its fitted blend weight is positive.
        """
        return self._slot.current().reranker

    @property
    def applied_seq(self) -> int:
        """The last journal entry this process has applied (other processes may have written more)."""
        return self._store.applied_seq

    @property
    def serving_model(self) -> ServingModel:
        """What orders candidates now: head, context model and behaviour index, cross-encoder."""
        return self._slot.current()

    @property
    def model_version(self) -> str:
        """Names the model serving; every cached result and score carries it in its key."""
        return self._slot.version

    @property
    def model_dir(self) -> Path | None:
        """The serving model folder (absolute), or ``None`` when ordering by recall only."""
        return self._slot.folder()

    def load_model(self, path: str | Path) -> ServingModel:
        """The model folder ``path`` loaded whole (context model and behaviour index included) but
        not serving: :meth:`recall_stage` can recall with it, e.g. while training its ranking head."""
        self._check_open()
        return self._slot.load(path)

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
        with self._store.write_lock:
            self._slot.switch(path, tier=tier, persist=persist, reranker=reranker)

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
        store = self._store
        items = store.catalog.validate(list(items))
        texts = [store.catalog.render(it) for it in items]
        hashes = [content_hash(t) for t in texts]
        self.catch_up()
        store.check_field_kinds(items)  # refused before anything is embedded
        fresh = store.stale_texts(items, hashes)  # embedded outside any lock
        embedded = dict(zip(fresh, self.embedder.embed([texts[i] for i in fresh], show_progress=show_progress))
                        if fresh else ())
        with store.writing():  # every process's writes before this one applied
            store.check_field_kinds(items)  # the index would refuse these after they were journaled
            added = updated = unchanged = 0
            vectors = np.zeros((len(items), self.dim), dtype=np.float32)
            todo = []
            for i, (it, h) in enumerate(zip(items, hashes)):
                if it.id in store.catalog:
                    row = store.catalog.row(it.id)
                    if store.hashes.get(row) == h:
                        vectors[i] = store.vectors[row]
                        same = store.catalog.is_current(it)
                        unchanged += same
                        updated += not same
                        continue
                    updated += 1
                else:
                    added += 1
                todo.append(i)
            late = [i for i in todo if i not in embedded]  # changed by another process meanwhile
            if late:
                embedded.update(zip(late, self.embedder.embed([texts[i] for i in late])))
            for i in todo:
                vectors[i] = embedded[i]
            if items and (added or updated):
                store.journal_upsert(items, vectors, hashes)
        return UpsertReport(added, updated, unchanged, len(embedded), time.perf_counter() - t0)

    def remove_items(self, ids: Iterable[str]) -> int:
        """Remove items by id; unknown ids raise :class:`UnknownItemError` and nothing changes."""
        self._check_open()
        ids = list(ids)
        for i, item_id in enumerate(ids):
            if not isinstance(item_id, str):
                raise InvalidInputError(f"ids[{i}]", item_id, "item ids are strings")
        with self._store.writing():
            for i, item_id in enumerate(ids):
                if item_id not in self.catalog:
                    raise UnknownItemError(f"ids[{i}]", item_id)
            unique = list(dict.fromkeys(ids))
            if unique:
                self._store.journal_remove(unique)
        return len(unique)

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
        with self._store.writing():
            for i, ev in enumerate(batch):
                ts = self.check_event(ev, f"events[{i}]", now)
                recs.append((ev.user_id, ev.item_id, self.catalog.row(ev.item_id), ev.kind, ts, ev.weight, ev.text))
            if not recs:
                return 0
            self._store.journal_events(recs)
        self._hot.events_arrived(r[0] for r in recs)
        return len(recs)

    def check_event(self, event: Event, field: str = "event", now: float | None = None) -> float:
        """Raise what :meth:`record` would raise for ``event`` (naming ``field``); return its timestamp.

        Checks: an :class:`Event`, of an item in the catalog, at most a day in the future, with
        ``text`` either ``None`` or non-empty and at most 2,000 characters. Changes nothing.
        """
        return check_event(event, self.catalog, field, now)

    # -- queries -----------------------------------------------------------------------

    def embed_text(self, text: str, field: str = "text") -> np.ndarray:
        """Embed one query text (cached), validated: non-empty and at most 2,000 characters."""
        return self._pipeline.embed_text(text, field)

    def search(self, text: str, k: int = 10, *, filters: Filters = None) -> list[tuple[str, float]]:
        """Items nearest to ``text`` (no user involved): ``[(item_id, score), ...]``."""
        self.catch_up()
        k = check_k(k)
        flt = parse_filter(filters)
        query = self.embed_text(text, "text")
        scores, ids = self.index.search(query.reshape(1, -1), k, filter=flt)
        return [(self.catalog.item_id(r), float(s)) for s, r in zip(scores[0].tolist(), ids[0].tolist())
                if r >= 0 and self.catalog.is_live(r)]

    def recall(self, user_id: str, *, n: int | None = None, instruction: str | None = None,
               filters: Filters = None) -> Candidates:
        """The recall stage alone: fused candidates for a user (rows and fused scores)."""
        self.catch_up()
        return self.recall_stage(self.users.get(check_user(user_id)), n, instruction=instruction,
                                 filters=filters).cands

    def history_view(self, rows: Sequence[int], kinds: Sequence[str] | None = None,
                     times: Sequence[float] | None = None, user_id: str = "(history)") -> UserView | None:
        """The view a user with this history would have (nothing is recorded or journaled).

        Used to recall candidates for a point in the past, e.g. hard negatives for training.
        """
        return self._store.history_view(rows, kinds, times, user_id)

    def recall_view(self, view: UserView | None, n: int, *, instruction: str | None = None,
                    filters: Filters = None) -> Candidates:
        """The recall stage for a given user view (see :meth:`history_view`)."""
        return self.recall_stage(view, n, instruction=instruction, filters=filters).cands

    def recall_stage(self, view: UserView | None, n: int | None = None, *, instruction: str | None = None,
                     filters: Filters = None, statistics: Sequence[RecallChannel] | None = None,
                     now: float | None = None, model: ServingModel | None = None) -> Recalled:
        """Recall for a user view with everything the ordering stage reads (:class:`Recalled`).

        ``statistics``: recall channels to use instead of the live ones (for instance a copy
        from :meth:`statistics` that leaves one user's steps out, when building training data).
        ``now``: the moment of the request (default: the clock; training passes the target's time).
        ``model``: a model from :meth:`load_model` to recall with instead of the serving one.
        """
        self.catch_up()
        inst = self.embed_text(instruction, "instruction") if instruction is not None else None
        return self._pipeline.recall(view, n or self.config.recall_n, inst, parse_filter(filters), statistics, now,
                                     model)

    def order_stage(self, view: UserView | None, recalled: Recalled, instruction: str | None = None, *,
                    rerank: bool = True) -> np.ndarray:
        """Final scores of ``recalled``'s candidates (in recall order) as :meth:`recommend` orders them."""
        return self._pipeline.order(view, recalled, instruction, rerank=rerank)

    def statistics(self) -> tuple[list[RecallChannel], int]:
        """A copy of the live recall statistics (channels) and the journal sequence they include,
        taken at one moment under the write lock."""
        self.catch_up()
        return self._store.statistics()

    def new_statistics(self) -> list[RecallChannel]:
        """Fresh recall channels as the config names them, with empty statistics."""
        return self._store.new_channels()

    def recommend(self, user_id: str, k: int = 10, *, instruction: str | None = None,
                  filters: Filters = None) -> list[Recommendation]:
        """Recommend ``k`` items for ``user_id``, optionally following a plain-words ``instruction``
        and restricted by metadata ``filters`` (``'price < 30 and category == "books"'`` or a mapping
        of equalities). An unknown user gets a cold-start list (instruction and popularity).

        The constraints the instruction states (:mod:`recsieve.engine.constraints`: "under $50",
        "from the 90s", a category of the catalog) are parsed, never executed: its price/year
        filter holds together with ``filters``, and items in the categories it names come first
        (others only fill up a list that would be shorter than ``k``). Each reason says what was applied.
        """
        self.catch_up()
        k = check_k(k)
        user_id = check_user(user_id)
        flt = parse_filter(filters)
        if instruction is not None:
            self.embed_text(instruction, "instruction")  # validate before anything else
        request: Request = (k, instruction, flt.text if flt else None)
        view = self.users.get(user_id)
        hot = self._hot
        cons = self._pipeline.constraints(instruction)
        key = self._cache_key(user_id, view, request, both(flt, cons.filter))
        if hot.cache is not None:
            hit = hot.cache.get(key)
            if hit is not None:
                hot.remember(user_id, request)
                return hit
        # While a near-line refresh of this user is on its way, answer fresh but fast (the head
        # alone, no cross-encoder) and leave caching to the refresh.
        pending = hot.pending(user_id)
        recs = self._compute(view, request, flt, cons, cross_encoder=not pending)
        if hot.cache is not None and not pending:
            hot.cache.put(key, recs)
        hot.remember(user_id, request)
        return recs

    def constraints(self, instruction: str) -> Constraints:
        """What ``instruction`` states, on this catalog: the filter, categories and phrases
        :meth:`recommend` applies (:func:`~recsieve.engine.constraints.parse_instruction`)."""
        self.catch_up()
        return self._pipeline.constraints(instruction)

    def _cache_key(self, user_id: str, view: UserView | None, request: Request, effective: Filter | None) -> str:
        """The result key; the filter in it is the effective one (the caller's and the instruction's)."""
        k, instruction, _ = request
        return HotUsers.key(user_id, 0 if view is None else view.version, self.catalog.version,
                            self._slot.current().version, (k, instruction, effective.text if effective else None))

    def _refresh(self, user_id: str, request: Request) -> tuple[str, list[Recommendation]]:
        """Near-line job: recompute one of a hot user's requests; the key is taken before computing."""
        view = self.users.get(user_id)
        flt, cons = parse_filter(request[2]), self._pipeline.constraints(request[1])
        key = self._cache_key(user_id, view, request, both(flt, cons.filter))
        return key, self._compute(view, request, flt, cons, cross_encoder=True)

    def _compute(self, view: UserView | None, request: Request, flt: Filter | None, cons: Constraints, *,
                 cross_encoder: bool) -> list[Recommendation]:
        k, instruction, _ = request
        pipe = self._pipeline
        inst_vec = self.embed_text(instruction, "instruction") if instruction is not None else None
        rows, final, recall, inside = pipe.ranked(view, max(self.config.recall_n, k), k, inst_vec, instruction, flt,
                                                  cons, cross_encoder=cross_encoder)
        out: list[Recommendation] = []
        for i, row in enumerate(rows.tolist()):
            if not self.catalog.is_live(row):  # removed while this request ran
                continue
            out.append(pipe.explain(view, inst_vec, row, float(final[i]), float(recall[i]), len(out) + 1,
                                    instruction, constraints=cons, in_category=bool(inside[i])))
            if len(out) == k:
                break
        return out

    def rank(self, view: UserView | None, n: int | None = None, *, instruction: str | None = None,
             filters: Filters = None, rerank: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Both stages for a user view, no cache: ``(rows, final scores)`` of all recalled candidates, best first,
        under the instruction's constraints as :meth:`recommend` applies them (its categories first,
        others only filling up to ``n``).

        ``rerank=False`` gives the recall-only ordering. Used by evaluation and benchmarks.
        """
        self.catch_up()
        n = n or self.config.recall_n
        inst = self.embed_text(instruction, "instruction") if instruction is not None else None
        rows, final, _, _ = self._pipeline.ranked(view, n, n, inst, instruction, parse_filter(filters),
                                                  self._pipeline.constraints(instruction), rerank=rerank)
        return rows, final

    def features(self, view: UserView | None, recalled: Recalled) -> np.ndarray:
        """The ranking head's features of recalled candidates (see :mod:`recsieve.engine.ranker`)."""
        return self._pipeline.features(view, recalled)

    def feature_names(self, context: bool | None = None) -> tuple[str, ...]:
        """The ranking head's feature layout for this engine's channels, with the context
        channel's features when ``context`` (default: when the serving model has a context encoder)."""
        return self._pipeline.feature_names(context)

    def text_vectors(self) -> np.ndarray:
        """A copy of every catalog row's text vector (``(num_rows, dim)``; removed rows keep theirs)."""
        return self._store.vectors[: self.catalog.num_rows].copy()

    def item_text(self, row: int) -> str:
        """The rendered text of the item at ``row`` (its title if it was removed meanwhile)."""
        return self._pipeline.item_text(row)

    def render_context(self, view: UserView | None, instruction: str | None, now: float | None = None) -> str:
        """The user-context text the re-ranker reads (same rendering in training and serving)."""
        return self._pipeline.render_context(view, instruction, now)

    # -- persistence -------------------------------------------------------------------

    def save(self) -> None:
        """Write a snapshot atomically (a crash mid-save leaves the previous one loadable)."""
        self._check_open()
        self._store.save()

    def stats(self) -> dict[str, Any]:
        """Counts describing the engine: items, users, journal, index, caches and near-line refresh."""
        self.catch_up()
        cfg = self.config
        return {
            **self._hot.stats(),
            "score_cache": self._pipeline.scores.stats(),
            "items": len(self.catalog),
            "users": len(self.users),
            "journal_seq": self.journal.last_seq,
            "snapshot_seq": self._store.snapshot_seq,
            "applied_seq": self._store.applied_seq,
            "index": {"backend": cfg.backend, "kind": cfg.index, "size": len(self.index), "dim": self.dim},
            "reranker": cfg.reranker_model or None,
        }

    def close(self) -> None:
        """Close the journal. Unsaved changes are safe in the journal and replayed on open."""
        if not self._closed:
            self._closed = True
            if self._hot is not None:
                self._hot.close()
            self._slot.close()
            self._store.close()

    def wait_refreshed(self, timeout: float | None = None) -> bool:
        """Block until queued near-line refreshes are done (for tests and benchmarks)."""
        return self._hot is None or self._hot.wait_refreshed(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("engine is closed")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_index(items: str | Path | Iterable[Item], directory: str | Path, config: EngineConfig | None = None, *,
                embedder: Embedder | None = None, show_progress: bool | None = None) -> tuple[Engine, UpsertReport]:
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
