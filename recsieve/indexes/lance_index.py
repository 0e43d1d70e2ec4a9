"""``LanceIndex``: the :class:`~recsieve.indexes.base.VectorIndex` protocol on a LanceDB table.

The table has columns ``id`` (int64), ``vector`` (``fixed_size_list<float32>[dim]``) and one
typed column per metadata field (``double`` for numbers, ``bool``, ``string``); a field seen
for the first time is added as an all-null column. Upserts are ``merge_insert`` on ``id``,
removals ``delete``; filters are pushed down with ``where(..., prefilter=True)`` and exclusions
as ``id NOT IN (...)``.

Where the table lives: with ``uri`` the LanceDB database at that local path (the table is
opened if it exists); without, a private temporary folder removed when the index is garbage
collected. :meth:`save` copies the dataset into the target folder; :meth:`load` copies it back
into a fresh working folder, so a saved snapshot is never modified afterwards.

ANN index: ``index_type`` ``"hnsw_sq"`` (IVF-HNSW-SQ), ``"ivf_pq"`` or ``"none"`` (exact
brute force). It is built automatically once the table holds ``index_min_rows`` rows;
rows written later stay unindexed — LanceDB scans them by brute force, so they are
searchable at once — until a compaction (LanceDB's ``optimize``: small fragments merged, deleted
rows dropped, the index remapped, unindexed rows folded in, old versions pruned) folds them in. It
runs automatically when unindexed rows exceed a quarter of the table, and every 64 writes.

**Compaction off the write lock** (private tables, those in a temporary folder: the engine's).
LanceDB's own conflict resolution does not allow compacting the live table while it is written:
a compaction's ``Rewrite`` commit is refused when a concurrent ``merge_insert`` or ``delete``
touched a fragment it rewrote, so under steady writes it would fail again and again. So a
compaction takes a copy of the dataset (:func:`~recsieve.indexes.lance_table.link_copy`: hard links,
made under the read lock, so it is the table at one version), runs ``optimize`` on the copy — and
``create_index`` there when the first ANN index is due or :meth:`LanceIndex.create_index` asked for
a re-trained one — while searches and writes go on against the live table; the writes made
meanwhile are replayed on the copy (most off the lock, the last under the write lock) and the copy
replaces the table in one swap under the write lock; the old folder is then deleted. The machinery
is :class:`~recsieve.indexes.rebuild.OffLockRebuilds`, shared with FAISS. The write that brings the
table to ``index_min_rows`` builds the first ANN index in the writer's thread before it returns,
but off the lock. A table in a caller's database (``uri``) may have other readers, so it is never
swapped: it compacts in place, as LanceDB allows, holding a lock only writers (and ``save``) take:
searches go on meanwhile against the version before (LanceDB's versions), writes wait for it.

Distances: the table's metric is ``"dot"`` (default) or ``"cosine"``; for the L2-normalised
vectors recsieve stores, both distances are ``1 - <q, x>``, so ``score = 1 - distance``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import (
    CorruptStoreError,
    InvalidInputError,
    MissingDependencyError,
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
from recsieve.indexes.rebuild import Cancelled, LogEntry, OffLockRebuilds
from recsieve.locks import RWLock
from recsieve.storage import atomic_write_json

try:
    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswSq, IvfPq

    from recsieve.indexes.lance_table import (
        ARROW_TYPES,
        add_fields,
        delete_ids,
        filter_sql,
        ids_sql,
        kinds_of,
        link_copy,
        replay,
        write_rows,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        f"LanceIndex needs lancedb and pyarrow: pip install 'recsieve[lance]' ({exc})"
    ) from exc

__all__ = ["LanceIndex", "LANCE_INDEX_TYPES", "table_schema"]

#: ANN index types :class:`LanceIndex` can build.
LANCE_INDEX_TYPES = ("hnsw_sq", "ivf_pq", "none")
_FORMAT, _VERSION = "recsieve-lance-index", 1
_OPTIMIZE_EVERY = 64  # writes between compactions of the small fragments each write leaves
_MIN_TRAIN_ROWS = 256  # LanceDB trains its ANN indexes on at least this many rows


def table_schema(dim: int, fields: Mapping[str, str]) -> pa.Schema:
    """The schema of a :class:`LanceIndex` table: ``id`` (int64), ``vector`` (float32[dim]) and
    one column per metadata field (``fields``: name -> kind, as
    :func:`~recsieve.indexes.checks.kind_of` tells it), in that order. A table written elsewhere
    in this schema (a distributed build's) opens as an index with ``LanceIndex(dim, uri=...)``."""
    base = [pa.field("id", pa.int64(), nullable=False), pa.field("vector", pa.list_(pa.float32(), dim))]
    return pa.schema(base + [pa.field(name, ARROW_TYPES[kind]) for name, kind in fields.items()])


class _Copy:
    """A compaction's working copy of a private table: its folder ``uri`` (``cleanup`` removes
    it), the live rows when it was taken (``count``), whether to (re)train its ANN index
    (``retrain``); once built, its ``db`` and ``table``, whether it has an ANN index, and the rows
    and writes replayed on it since (``unindexed``, ``writes``)."""

    def __init__(self, uri: Path, cleanup: weakref.finalize, count: int, retrain: bool) -> None:
        self.uri, self.cleanup, self.count, self.retrain = uri, cleanup, count, retrain
        self.db: Any = None
        self.table: Any = None
        self.indexed, self.unindexed, self.writes = False, 0, 0


class LanceIndex(OffLockRebuilds, VectorIndex):
    """Vector index on a LanceDB table, with SQL-pushed-down metadata filters.

    ``index_type``: ``"hnsw_sq"`` | ``"ivf_pq"`` | ``"none"``; ``metric``: ``"dot"`` |
    ``"cosine"``; ``index_min_rows``: table size at which the ANN index is first built;
    ``num_partitions``, ``num_sub_vectors``, ``hnsw_m``, ``ef_construction``: index build
    settings (LanceDB defaults when ``None``, except ``num_sub_vectors``: ``dim / 8``); ``ef_search``, ``nprobes``, ``refine_factor``:
    default search settings, overridable per call with :class:`SearchParams` (``refine_factor``
    defaults to 10 for ``ivf_pq``, whose PQ distances alone are too coarse to rank by).
    """

    def __init__(
        self,
        dim: int,
        *,
        uri: str | Path | None = None,
        index_type: str = "hnsw_sq",
        metric: str = "dot",
        table_name: str = "items",
        index_min_rows: int = 4096,
        num_partitions: int | None = None,
        num_sub_vectors: int | None = None,
        hnsw_m: int = 20,
        ef_construction: int = 300,
        ef_search: int | None = None,
        nprobes: int = 20,
        refine_factor: int | None = None,
    ) -> None:
        self.dim = check_positive("dim", dim)
        if index_type not in LANCE_INDEX_TYPES:
            raise InvalidInputError(
                "index_type", index_type, f"must be one of {', '.join(LANCE_INDEX_TYPES)}"
            )
        if metric not in ("dot", "cosine"):
            raise InvalidInputError("metric", metric, "must be 'dot' or 'cosine'")
        if not isinstance(table_name, str) or not table_name.isidentifier():
            raise InvalidInputError("table_name", table_name, "must be an identifier")
        self.index_type = index_type
        self.metric = metric
        self.table_name = table_name
        self.index_min_rows = check_positive("index_min_rows", index_min_rows)
        self.num_partitions = check_positive("num_partitions", num_partitions, allow_none=True)
        self.num_sub_vectors = check_positive("num_sub_vectors", num_sub_vectors, allow_none=True)
        if self.num_sub_vectors is None and index_type == "ivf_pq" and self.dim % 8 == 0:
            self.num_sub_vectors = self.dim // 8  # 8 dims per PQ code; LanceDB's dim/16 is too coarse
        self.hnsw_m = check_positive("hnsw_m", hnsw_m)
        self.ef_construction = check_positive("ef_construction", ef_construction)
        self.ef_search = check_positive("ef_search", ef_search, allow_none=True)
        self.nprobes = check_positive("nprobes", nprobes)
        self.refine_factor = check_positive("refine_factor", refine_factor, allow_none=True)
        if self.refine_factor is None and index_type == "ivf_pq":
            self.refine_factor = 10  # PQ distances are coarse: re-rank 10 * k candidates exactly
        self._lock = RWLock()
        self._init_rebuilds()
        self._private = uri is None  # a caller's table: writes and in-place maintenance hold _writing
        self._writing: threading.Lock | nullcontext = nullcontext() if self._private else threading.Lock()
        if uri is None:
            uri = tempfile.mkdtemp(prefix="recsieve-lance-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, uri, True)
        self.uri = Path(uri)
        self._open()

    def _open(self) -> None:
        self._db = lancedb.connect(str(self.uri))
        if self.dataset_path.is_dir():
            self._table = self._db.open_table(self.table_name)
            self._check_schema(self._table.schema)
        else:
            self._table = self._db.create_table(self.table_name, schema=table_schema(self.dim, {}))
        self._schema = kinds_of(self._table.schema)
        self._count = self._table.count_rows()
        self._indexed = bool(self._table.list_indices())
        self._unindexed, self._writes = 0, 0

    def _check_schema(self, schema: pa.Schema) -> None:
        names = schema.names
        if names[:2] != ["id", "vector"] or schema.field("id").type != pa.int64():
            raise CorruptStoreError(
                f"{self.uri}/{self.table_name}: not a recsieve table (columns {names})"
            )
        if schema.field("vector").type != pa.list_(pa.float32(), self.dim):
            raise CorruptStoreError(
                f"{self.uri}/{self.table_name}: vector column is not float32[{self.dim}]"
            )
        for f in schema:
            if f.name not in ("id", "vector") and f.type not in ARROW_TYPES.values():
                raise CorruptStoreError(
                    f"{self.uri}/{self.table_name}: column {f.name} has type {f.type}"
                )

    @property
    def dataset_path(self) -> Path:
        """The Lance dataset folder of the table (a compaction moves a private table to a new folder)."""
        return self.uri / f"{self.table_name}.lance"

    @property
    def indexed(self) -> bool:
        """Whether an ANN index has been built on the vector column."""
        return self._indexed

    @property
    def fragments(self) -> int:
        """Fragments of the live table: each write adds one, a compaction merges them."""
        with self._lock.read():
            return int(self._table.stats()["fragment_stats"]["num_fragments"])  # no pylance needed

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
        with self._writing:
            with self._lock.write():
                rows, new_fields = clean_metadata(metadata, len(arr), self._schema)
                if new_fields:
                    add_fields(self._table, new_fields)
                    self._schema = {**self._schema, **new_fields}
                write_rows(self._table, arr, vecs, rows, self._schema)
                self._record(LogEntry(arr.copy(), vecs.copy(), rows, new_fields))
                self._written += len(arr)
                self._count = self._table.count_rows()
                self._unindexed += len(arr)
                due = self._maintain()
            self._after_write(due)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored); return how many were removed."""
        arr = np.unique(check_ids(ids, "ids"))
        due = None
        with self._writing:
            with self._lock.write():
                removed = delete_ids(self._table, arr)
                self._count = self._table.count_rows()
                if removed:
                    self._record(LogEntry(arr, None, None, None))
                    self._written += removed
                    due = self._maintain()
            if due != "rebuild":  # removing never brings a private table to index_min_rows
                self._after_write(due)
        return removed

    def _index_due(self, count: int) -> bool:
        """Whether a table of ``count`` rows without an ANN index should get one now."""
        return self.index_type != "none" and count >= max(self.index_min_rows, _MIN_TRAIN_ROWS)

    def _maintain(self) -> str | None:
        """After a write, under the write lock: build the ANN index (the table is big enough) or
        optimize (many rows unindexed, or many small writes)? A private table compacts in the
        background; what the writer does after the write lock (:meth:`_after_write`) is returned."""
        self._writes += 1
        first = not self._indexed and self._index_due(self._count)
        due = (self._indexed and self._unindexed > self._count // 4) or self._writes >= _OPTIMIZE_EVERY
        if self._private:
            if not first and due and self._written >= self._retry_at:
                self._start_background()
            return "rebuild" if first else None
        return "index" if first else "optimize" if due else None

    def _after_write(self, due: str | None) -> None:
        """``"rebuild"``: a private table's first ANN index, off the lock; ``"index"`` /
        ``"optimize"``: a caller's table in place, holding ``_writing`` (searches go on)."""
        if due == "rebuild":
            self._rebuild_here()
        elif due is not None:
            self._in_place(index=due == "index")

    def _in_place(self, *, index: bool) -> None:
        """Index or optimize a caller's table in place (caller holds ``_writing``): searches read
        the version before meanwhile, LanceDB commits a new one."""
        if index:
            self._build_index(self._table)
            self._indexed, self._unindexed = True, 0
        else:
            self._table.optimize()  # LanceDB's grace period before old versions go: others may read them
            self._unindexed, self._writes = 0, 0

    def _build_index(self, table: Any) -> None:
        """Train the ANN index of ``table`` over its rows (replacing one it has)."""
        if self.index_type == "hnsw_sq":
            config: Any = HnswSq(
                distance_type=self.metric,
                num_partitions=self.num_partitions,
                m=self.hnsw_m,
                ef_construction=self.ef_construction,
            )
        else:
            config = IvfPq(
                distance_type=self.metric,
                num_partitions=self.num_partitions,
                num_sub_vectors=self.num_sub_vectors,
            )
        table.create_index("vector", config=config, replace=True)

    # the hooks of OffLockRebuilds (private tables)

    def _begin(self, retrain: bool = False) -> _Copy:
        """Copy the live table (hard links) while no writer runs: the table at its current version."""
        root = link_copy(self.dataset_path, f"{self.table_name}.lance")
        cleanup = weakref.finalize(self, shutil.rmtree, str(root), True)
        return _Copy(root, cleanup, self._count, retrain or (not self._indexed and self._index_due(self._count)))

    def _build(self, snap: _Copy, cancel: threading.Event) -> _Copy:
        """Optimize the copy, and build its ANN index when the snapshot asked for one (the copy is
        discarded if this raises)."""
        snap.db = lancedb.connect(str(snap.uri))
        snap.table = snap.db.open_table(self.table_name)
        if snap.retrain and snap.table.list_indices():  # no remap of an index about to be replaced
            snap.table.drop_index(snap.table.list_indices()[0].name)
        if cancel.is_set():
            raise Cancelled
        with warnings.catch_warnings():  # every old version goes at once: nobody else reads the copy
            warnings.filterwarnings("ignore", message=".*removes every version except the latest")
            snap.table.optimize(cleanup_older_than=timedelta(0))
        if snap.retrain:
            if cancel.is_set():
                raise Cancelled
            self._build_index(snap.table)
        snap.indexed = bool(snap.table.list_indices())
        return snap

    def _replay(self, new: _Copy, entries: Sequence[LogEntry]) -> None:
        if entries:
            new.unindexed += replay(new.table, entries)
            new.writes += 1

    def _swap(self, new: _Copy) -> Any:
        old = self._cleanup
        self.uri, self._db, self._table, self._cleanup = new.uri, new.db, new.table, new.cleanup
        self._count, self._indexed = self._table.count_rows(), new.indexed
        self._unindexed, self._writes = new.unindexed, new.writes
        return old

    def _discard(self, state: Any) -> None:
        """Delete a folder nobody serves from (its finalizer: the replaced one, or a failed copy)."""
        (state.cleanup if isinstance(state, _Copy) else state)()

    def _describe(self, snap: _Copy) -> str:
        return f"LanceDB {self.index_type} compaction of {snap.count} rows"

    def _retry_after(self, snap: _Copy) -> int:
        return max(64, snap.count // 4)

    def _due_here(self) -> bool:
        """The table reached ``index_min_rows``: the writer builds the first ANN index (off the lock)."""
        return self._private and not self._indexed and self._index_due(self._count)

    def compact(self, *, wait: bool = True) -> bool:
        """Compact now (see :meth:`optimize`). A private table is compacted off the write lock:
        ``wait=False`` starts a background compaction and returns whether it started (see
        :meth:`OffLockRebuilds.compact`). A table in a caller's database compacts in place in the
        caller's thread only (``wait=False`` starts nothing: False), searches going on meanwhile."""
        if self._private:
            return super().compact(wait=wait)
        if wait:
            self.optimize()
        return wait

    def create_index(self) -> None:
        """(Re)build the ANN index now over every row (needs ``index_type != "none"`` and >= 256
        rows): re-trained, on a copy off the write lock for a private table (writes made meanwhile
        reach it), in place in a caller's database (searches go on meanwhile, writes wait)."""
        if self.index_type == "none":
            raise InvalidInputError(
                "index_type", self.index_type, "this index is configured without an ANN index"
            )
        with self._lock.read():
            if self._count < _MIN_TRAIN_ROWS:
                raise InvalidInputError(
                    "rows", self._count, f"need at least {_MIN_TRAIN_ROWS} rows to train an ANN index"
                )
        if self._private:
            self._rebuild_now(retrain=True)
            return
        with self._writing:
            self._in_place(index=True)

    def optimize(self) -> None:
        """Compact the table, add unindexed rows to the ANN index (building it when the table has
        reached ``index_min_rows``) and drop old versions: in the caller's thread, off the write
        lock for a private table, in place in a caller's database (searches go on meanwhile,
        writes wait)."""
        if self._private:
            self._rebuild_now()
            return
        with self._writing:
            self._in_place(index=False)

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item_id: object) -> bool:
        if (
            isinstance(item_id, (bool, np.bool_))
            or not isinstance(item_id, (int, np.integer))
            or item_id < 0
        ):
            return False
        with self._lock.read():
            return self._table.count_rows(f"id = {int(item_id)}") > 0

    def metadata(self, item_id: int) -> dict[str, Any]:
        """The filterable metadata stored for ``item_id`` (``KeyError`` if absent)."""
        cols = list(self._schema)
        with self._lock.read():
            rows = (
                self._table.search()
                .where(f"id = {int(item_id)}")
                .select(cols or ["id"])
                .to_arrow()
                .to_pylist()
            )
        if not rows:
            raise KeyError(item_id)
        return {k: v for k, v in rows[0].items() if k in self._schema and v is not None}

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filter: Filter | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query among rows matching ``filter``, not in ``exclude``."""
        q, k, excl = check_search(queries, k, filter, exclude, self.dim)
        excl = np.unique(excl)
        params = params or SearchParams()
        ef = check_positive("params.ef_search", params.ef_search, allow_none=True) or self.ef_search
        nprobes = check_positive("params.nprobe", params.nprobe, allow_none=True) or self.nprobes
        refine = (
            check_positive("params.refine_factor", params.refine_factor, allow_none=True)
            or self.refine_factor
        )
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        clauses = []
        if filter is not None:
            clauses.append(filter_sql(filter.tree, self._schema))
        if len(excl):
            clauses.append(f"(id NOT IN ({ids_sql(excl)}))")
        where = " AND ".join(clauses)
        with self._lock.read():
            if not self._count:
                return scores, ids
            for row, vec in enumerate(q):
                query = self._table.search(vec, vector_column_name="vector").distance_type(
                    self.metric
                )
                query = query.limit(k).select(["id", "_distance"])
                if where:
                    query = query.where(where, prefilter=True)
                if self._indexed:
                    query = query.nprobes(nprobes)
                    if ef is not None:
                        query = query.ef(max(ef, k))
                    if refine is not None:
                        query = query.refine_factor(refine)
                result = query.to_arrow()
                n = result.num_rows
                ids[row, :n] = result["id"].to_numpy()
                scores[row, :n] = 1.0 - result["_distance"].to_numpy().astype(np.float32)
        return scores, ids

    # ------------------------------------------------------------------ persistence

    def _settings(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "index_type": self.index_type,
            "metric": self.metric,
            "table_name": self.table_name,
            "index_min_rows": self.index_min_rows,
            "num_partitions": self.num_partitions,
            "num_sub_vectors": self.num_sub_vectors,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "nprobes": self.nprobes,
            "refine_factor": self.refine_factor,
        }

    def save(self, directory: Path) -> None:
        """Copy the table's dataset into ``directory`` with a ``meta.json`` (settings, file sizes)."""
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StoreError(f"index directory {directory} must be an empty folder")
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{self.table_name}.lance"
        with self._writing, self._lock.read():  # a caller's table: no in-place compaction mid-copy
            shutil.copytree(self.dataset_path, target)
            meta = {
                "format": _FORMAT,
                "version": _VERSION,
                "settings": self._settings(),
                "rows": self._count,
                "table_version": self._table.version,
                "files": {
                    p.relative_to(target).as_posix(): p.stat().st_size
                    for p in target.rglob("*")
                    if p.is_file()
                },
            }
        atomic_write_json(directory / META_FILE, meta)

    @classmethod
    def load(cls, directory: Path, *, uri: str | Path | None = None) -> LanceIndex:
        """Read an index written by :meth:`save` into a working copy (``uri``, else a temp folder).

        A missing or damaged folder raises :class:`StoreError` / :class:`CorruptStoreError`.
        """
        directory = Path(directory)
        meta = read_index_meta(directory, _FORMAT, _VERSION, "LanceDB")
        try:
            settings = dict(meta["settings"])
            rows, files = int(meta["rows"]), dict(meta["files"])
            name = settings["table_name"]
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"bad table name {name!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(
                f"{directory / META_FILE}: bad or missing entry ({exc})"
            ) from None
        source = directory / f"{name}.lance"
        if not source.is_dir():
            raise StoreError(f"{directory}: missing the table folder {source.name}")
        for rel, size in files.items():
            path = source / rel
            if not path.is_file() or path.stat().st_size != size:
                raise CorruptStoreError(f"{directory}: table file {rel} is missing or truncated")
        workdir = Path(uri) if uri is not None else Path(tempfile.mkdtemp(prefix="recsieve-lance-"))
        if (workdir / source.name).exists():
            raise StoreError(f"working location {workdir} already holds a table {source.name}")
        shutil.copytree(source, workdir / source.name)
        try:
            self = cls(**settings, uri=workdir)
        except Exception as exc:  # lancedb raises assorted types for unreadable datasets
            shutil.rmtree(workdir if uri is None else workdir / source.name, ignore_errors=True)
            if isinstance(exc, StoreError):
                raise
            raise CorruptStoreError(
                f"{directory}: bad settings or unreadable table ({str(exc)[:200]})"
            ) from None
        if uri is None:
            self._private, self._writing = True, nullcontext()
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(workdir), True)
        try:  # read the id column and run one search, so damaged files fail here, not at search time
            ids = (
                self._table.search().select(["id"]).limit(max(rows, 1)).to_arrow()["id"].to_numpy()
            )
            self.search(np.full(self.dim, self.dim**-0.5, dtype=np.float32), 1)
        except Exception as exc:  # same: any failure to read means the copy is unusable
            raise CorruptStoreError(
                f"{directory}: LanceDB cannot read the table ({str(exc)[:200]})"
            ) from None
        if self._count != rows or len(ids) != rows or len(np.unique(ids)) != rows:
            raise CorruptStoreError(
                f"{directory}: table holds {self._count} rows, expected {rows} unique ids"
            )
        return self

    def __repr__(self) -> str:
        return f"LanceIndex(dim={self.dim}, index_type={self.index_type!r}, rows={len(self)}, uri={str(self.uri)!r})"
