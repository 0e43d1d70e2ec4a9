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
searchable at once — until :meth:`optimize` folds them in. It runs automatically when unindexed
rows exceed a quarter of the table, and every 64 writes (merging the small fragments each
write leaves).

Distances: the table's metric is ``"dot"`` (default) or ``"cosine"``; for the L2-normalised
vectors recsieve stores, both distances are ``1 - <q, x>``, so ``score = 1 - distance``.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from collections.abc import Mapping, Sequence
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
    literal_kind,
    read_index_meta,
)
from recsieve.locks import RWLock
from recsieve.storage import atomic_write_json

try:
    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswSq, IvfPq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        f"LanceIndex needs lancedb and pyarrow: pip install 'recsieve[lance]' ({exc})"
    ) from exc

__all__ = ["LanceIndex", "LANCE_INDEX_TYPES", "table_schema"]

#: ANN index types :class:`LanceIndex` can build.
LANCE_INDEX_TYPES = ("hnsw_sq", "ivf_pq", "none")
_FORMAT = "recsieve-lance-index"
_VERSION = 1
_NULL = "CAST(NULL AS BOOLEAN)"  # SQL "unknown"
_ARROW = {"number": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
_KIND_OF = {pa.float64(): "number", pa.bool_(): "bool", pa.string(): "string"}
_CHUNK = 4096  # ids per IN (...) list
_OPTIMIZE_EVERY = 64  # writes between compactions of the small fragments each write leaves


def table_schema(dim: int, fields: Mapping[str, str]) -> pa.Schema:
    """The schema of a :class:`LanceIndex` table: ``id`` (int64), ``vector`` (float32[dim]) and
    one column per metadata field (``fields``: name -> kind, as
    :func:`~recsieve.indexes.checks.kind_of` tells it), in that order. A table written elsewhere
    in this schema (a distributed build's) opens as an index with ``LanceIndex(dim, uri=...)``."""
    base = [pa.field("id", pa.int64(), nullable=False), pa.field("vector", pa.list_(pa.float32(), dim))]
    return pa.schema(base + [pa.field(name, _ARROW[kind]) for name, kind in fields.items()])


def _ids_sql(ids: Sequence[int]) -> str:
    return ", ".join(str(int(i)) for i in ids)


def _sql_lit(lit: Any) -> str:
    if isinstance(lit, bool):
        return "TRUE" if lit else "FALSE"
    if isinstance(lit, (int, float)):
        return repr(float(lit))
    return "'" + lit.replace("'", "''") + "'"


def filter_sql(node: tuple, schema: Mapping[str, str]) -> str:
    """Render a filter tree as Lance SQL with the semantics of :meth:`Filter.matches`.

    Unlike :meth:`Filter.to_sql` it knows the table's columns: a field the table lacks, or a
    literal of another kind than the column, is SQL ``NULL`` (unknown) instead of an error.
    """
    kind = node[0]
    if kind == "cmp":
        name, op, lit = node[1], node[2], node[3]
        if schema.get(name) != literal_kind(lit):
            return _NULL
        return f"(`{name}` {'=' if op == '==' else op} {_sql_lit(lit)})"
    if kind == "in":
        name, lits, negated = node[1], node[2], node[3]
        if name not in schema:
            return _NULL
        if not lits:  # unknown when the value is missing, else false (true when negated)
            return f"(`{name}` {'=' if negated else '<>'} `{name}`)"
        values = ", ".join(_sql_lit(v) if literal_kind(v) == schema[name] else "NULL" for v in lits)
        return f"(`{name}` {'NOT IN' if negated else 'IN'} ({values}))"
    if kind == "not":
        return f"(NOT {filter_sql(node[1], schema)})"
    joiner = " AND " if kind == "and" else " OR "
    return "(" + joiner.join(filter_sql(n, schema) for n in node[1]) + ")"


class LanceIndex(VectorIndex):
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
        self._private = uri is None
        if uri is None:
            workdir = tempfile.mkdtemp(prefix="recsieve-lance-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
            uri = workdir
        self.uri = Path(uri)
        self._open()

    def _open(self) -> None:
        self._db = lancedb.connect(str(self.uri))
        if self.dataset_path.is_dir():
            self._table = self._db.open_table(self.table_name)
            self._check_schema(self._table.schema)
        else:
            self._table = self._db.create_table(self.table_name, schema=table_schema(self.dim, {}))
        self._schema = {
            f.name: _KIND_OF[f.type] for f in self._table.schema if f.name not in ("id", "vector")
        }
        self._count = self._table.count_rows()
        self._indexed = bool(self._table.list_indices())
        self._unindexed = 0
        self._writes = 0

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
            if f.name not in ("id", "vector") and f.type not in _KIND_OF:
                raise CorruptStoreError(
                    f"{self.uri}/{self.table_name}: column {f.name} has type {f.type}"
                )

    @property
    def dataset_path(self) -> Path:
        """The Lance dataset folder of the table."""
        return self.uri / f"{self.table_name}.lance"

    @property
    def indexed(self) -> bool:
        """Whether an ANN index has been built on the vector column."""
        return self._indexed

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
            rows, new_fields = clean_metadata(metadata, len(arr), self._schema)
            if new_fields:
                self._table.add_columns(
                    [pa.field(name, _ARROW[kind]) for name, kind in new_fields.items()]
                )
                self._schema = {**self._schema, **new_fields}
            columns: dict[str, Any] = {
                "id": pa.array(arr, pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vecs.ravel(), pa.float32()), self.dim
                ),
            }
            for name, kind in self._schema.items():
                columns[name] = pa.array([row.get(name) for row in rows], _ARROW[kind])
            batch = pa.table(columns, schema=self._table.schema)
            merge = self._table.merge_insert("id").when_matched_update_all()
            merge.when_not_matched_insert_all().execute(batch)
            self._count = self._table.count_rows()
            self._unindexed += len(arr)
            self._maintain()

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored); return how many were removed."""
        arr = np.unique(check_ids(ids, "ids"))
        removed = 0
        with self._lock.write():
            for start in range(0, len(arr), _CHUNK):
                where = f"id IN ({_ids_sql(arr[start : start + _CHUNK])})"
                hits = self._table.count_rows(where)
                if hits:
                    self._table.delete(where)
                    removed += hits
            self._count = self._table.count_rows()
            if removed:
                self._maintain()
        return removed

    def _maintain(self) -> None:
        """After a write: build the ANN index once the table is big enough; optimize when many
        rows are unindexed or many small writes have fragmented the table."""
        self._writes += 1
        big = self._count >= self.index_min_rows
        if self.index_type != "none" and not self._indexed and big:
            self._build_index()
        elif (self._indexed and self._unindexed > self._count // 4) or self._writes >= _OPTIMIZE_EVERY:
            self._optimize()

    def _build_index(self) -> None:
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
        self._table.create_index("vector", config=config, replace=True)
        self._indexed = True
        self._unindexed = 0

    def _optimize(self) -> None:
        if self._private:  # nobody else reads our temp folder, and our lock excludes readers
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*removes every version except the latest")
                self._table.optimize(cleanup_older_than=timedelta(0))
        else:  # a caller's database: keep LanceDB's default grace period for other readers
            self._table.optimize()
        self._unindexed = 0
        self._writes = 0

    def create_index(self) -> None:
        """(Re)build the ANN index now over every row (needs ``index_type != "none"`` and >= 256 rows)."""
        if self.index_type == "none":
            raise InvalidInputError(
                "index_type", self.index_type, "this index is configured without an ANN index"
            )
        with self._lock.write():
            if self._count < 256:
                raise InvalidInputError(
                    "rows", self._count, "need at least 256 rows to train an ANN index"
                )
            self._build_index()

    def optimize(self) -> None:
        """Compact the table, add unindexed rows to the ANN index and drop old versions."""
        with self._lock.write():
            self._optimize()

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
            clauses.append(f"(id NOT IN ({_ids_sql(excl)}))")
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
        with self._lock.read():
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
            self._private = True
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
