"""``build_index`` on Ray: read the catalog with Ray Data, embed it with a pool of actors, write
the vectors and metadata to a Lance dataset, and assemble an engine directory from it.

1. **Read** (:mod:`recsieve.distributed.read`): a Ray Data task per shard, the single-process
   build's reader and checks; the driver raises the first error that build would raise, then
   runs the catalog's and the store's whole-batch checks on the items (the same code, so the same
   errors), before anything is embedded.
2. **Embed**: ``map_batches`` over the read rows with :class:`EmbedBatches`, a callable class, so
   each actor of the pool loads the embedder once; ``actors`` and ``batch_size`` are options, and
   an actor takes a GPU when the cluster has them (and the embedding backend runs on torch).
   Each batch becomes rows of a LanceDB index table (:func:`~recsieve.indexes.lance_index.table_schema`:
   ``id`` = catalog row, ``vector``, one column per metadata field) and Ray Data's
   ``write_lance`` writes them: fragments written by the workers, committed once by the driver.
3. **Assemble** in the driver, with the engine's own code: a :class:`~recsieve.engine.store.Store`
   over a new directory takes the items in catalog order (``apply_upsert``, as replaying the
   journal would) with the vectors read back from the Lance dataset. LanceDB: the Lance dataset
   *is* the index table, opened as it is (its ANN index built as the engine builds it); FAISS:
   the engine's index is filled ``chunk_rows`` rows at a time, an IVF then retrained over every
   vector, as one single-process upsert trains it. ``Store.save`` writes the snapshot (manifest,
   checksums, the embedding backend recorded), as for any engine directory.

The directory is assembled in a hidden sibling folder and renamed into place when complete: a
build that fails or is killed never leaves a directory at ``out`` (a killed one leaves the hidden
``.NAME.building-*`` folder behind). Rows, vectors and search results equal the single-process
build's on the same items (``tests/test_ray_build.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.distributed.connect import RAY_EXTRA, ray_session, require_ray
from recsieve.distributed.read import item_shards, read_catalog
from recsieve.embedding import Embedder, SentenceTransformerEmbedder, check_backend, resolve_backend
from recsieve.engine.config import CONFIG_FILE, EngineConfig
from recsieve.engine.store import Store, new_index
from recsieve.errors import InvalidInputError, MissingDependencyError, StoreError
from recsieve.indexes.base import VectorIndex
from recsieve.indexes.checks import check_positive, kind_of
from recsieve.rendering import DEFAULT_TEMPLATE
from recsieve.storage import atomic_write_text, fsync_dir
from recsieve.types import Item

__all__ = ["BuildReport", "EmbedBatches", "build_index"]

log = logging.getLogger("recsieve")

#: Catalog rows added to a FAISS index at once while assembling.
CHUNK_ROWS = 65536
_TABLE = "items"  # the LanceDB table name LanceIndex uses by default
_TORCH_BACKENDS = ("torch", "torch-bf16")  # embedding backends that can run on a GPU


@dataclass(frozen=True)
class BuildReport:
    """What a distributed build did: items, actors, and where the time went (seconds)."""

    directory: Path
    items: int
    actors: int
    gpus_per_actor: float
    read_s: float
    embed_s: float
    assemble_s: float
    seconds: float

    @property
    def items_per_s(self) -> float:
        """Items per second of the whole build (read, embed, assemble)."""
        return self.items / self.seconds if self.seconds > 0 else 0.0


class EmbedBatches:
    """Ray Data callable class: each actor makes one embedder (``embedder()``) and turns batches
    of read rows into rows of the index table (``id``: catalog row, ``vector``, metadata ``fields``).

    ``backend``: the embedding backend the build records; an embedder that says it embeds with
    another is refused. ``offsets``: each shard's first catalog row.
    """

    def __init__(self, embedder: Callable[[], Embedder], backend: str, offsets: np.ndarray,
                 fields: Mapping[str, str]) -> None:
        self._embedder = embedder()
        check_backend(self._embedder, backend, "this build")
        self._offsets = np.asarray(offsets, np.int64)
        self._fields = dict(fields)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from recsieve.indexes.lance_index import table_schema

        rows = self._offsets[batch.column("shard").to_numpy()] + batch.column("ordinal").to_numpy()
        vectors = self._embedder.embed(batch.column("text").to_pylist(), show_progress=False)
        metadata = [json.loads(s).get("metadata", {}) for s in batch.column("item").to_pylist()]
        schema = table_schema(vectors.shape[1], self._fields)
        columns = [pa.array(rows, pa.int64()),
                   pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1])]
        columns += [pa.array([m.get(name) for m in metadata], schema.field(name).type) for name in self._fields]
        return pa.Table.from_arrays(columns, schema=schema)


def _field_kinds(items: Sequence[Item]) -> dict[str, str]:
    """Each metadata field's kind, fields in order of first appearance (the index table's columns)."""
    kinds: dict[str, str] = {}
    for item in items:
        for key, value in item.metadata.items():
            kinds.setdefault(key, kind_of(value))
    return kinds


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"engine directory {out} exists and is not empty; a distributed build writes a new "
                         "directory (update an existing one with `recsieve build-index` without --ray, or upsert)")


def _read_vectors(uri: str, n: int) -> np.ndarray:
    """The vectors of the Lance dataset at ``uri`` by catalog row (its ``id``): every row once."""
    import lance

    vectors: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    for batch in lance.dataset(uri).to_batches(columns=["id", "vector"]):
        ids = batch.column(0).to_numpy()
        column = batch.column(1)
        block = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), column.type.list_size)
        if vectors is None:
            vectors = np.zeros((n, block.shape[1]), dtype=np.float32)
        vectors[ids] = block
        seen[ids] = True
    if vectors is None or not seen.all():
        raise StoreError(f"{uri}: the embedded rows are incomplete ({int(seen.sum())} of {n} rows)")
    return vectors


def _lance_index(config: EngineConfig, dim: int, staging: Path) -> VectorIndex:
    """The Lance dataset the actors wrote, opened as the engine's LanceDB index (its kind as
    :func:`~recsieve.engine.store.new_index` makes it), its ANN index built as the engine's
    first upsert of that many rows would build it."""
    from recsieve.indexes.lance_index import LanceIndex

    index = LanceIndex(dim, index_type=new_index(config, dim).index_type, uri=staging, table_name=_TABLE)
    if index.index_type != "none" and len(index) >= index.index_min_rows:
        index.create_index()
    return index


def _fill_lance(store: Store, items: list[Item], vectors: np.ndarray, hashes: list[str], chunk_rows: int) -> None:
    store.apply_upsert(items, vectors, hashes, indexed=True)


def _fill_faiss(store: Store, items: list[Item], vectors: np.ndarray, hashes: list[str], chunk_rows: int) -> None:
    for start in range(0, len(items), chunk_rows):
        end = start + chunk_rows
        store.apply_upsert(items[start:end], vectors[start:end], hashes[start:end])
    if store.config.index == "ivf" and len(items) > chunk_rows:
        store.index.compact()  # trained on every vector, as one single-process upsert trains it


#: backend -> (the index to assemble over, or None for a new one; how the items go in)
_ASSEMBLY = {
    "faiss": (lambda config, dim, staging: None, _fill_faiss),
    "lance": (_lance_index, _fill_lance),
}


def _default_embedder(config: EngineConfig, backend: str, device: str) -> Callable[[], Embedder]:
    return functools.partial(SentenceTransformerEmbedder, config.embedding_model, backend=backend, device=device)


def build_index(items: str | Path, out: str | Path, config: EngineConfig | None = None, *,
                address: str | None = None, actors: int | None = None, batch_size: int = 256,
                cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None,
                embedder: Callable[[], Embedder] | None = None, staging: str | Path | None = None,
                num_cpus: int | None = None, chunk_rows: int = CHUNK_ROWS) -> BuildReport:
    """Build a new engine directory ``out`` from the item file or folder of shards ``items`` on Ray.

    ``address``: the Ray cluster (:func:`~recsieve.distributed.connect.connect`; ``None``: a local
    Ray, or the one this process is connected to already); ``num_cpus``: CPUs of a local Ray started
    here. ``actors``: embedding actors (``None``: as many as the cluster holds); ``batch_size``:
    items per batch an actor embeds; ``cpus_per_actor``; ``gpus_per_actor`` (``None``: one when the
    cluster has GPUs and the config's embedding backend runs on torch, else none). ``embedder``: a
    picklable callable each actor calls once to make its embedder (default: the config's
    sentence-transformers model and backend, on ``cuda`` when the actor has a GPU). ``staging``: a
    folder every node can reach for the Lance dataset (needed on a cluster of several machines;
    default: inside the directory being built, fine on one machine). ``items`` must be readable at
    the same path by every node.

    Raises what the single-process ``build_index`` raises for bad input (same classes and
    messages; ids are also unique across shards), :class:`StoreError` when ``out`` holds
    anything, :class:`MissingDependencyError` without Ray, :class:`ClusterUnavailableError` when
    no cluster answers at ``address``. Nothing is left at ``out`` unless the build completes.
    """
    t0 = time.perf_counter()
    config = config or EngineConfig()
    require_ray("data")
    try:
        import lance  # noqa: F401 - Ray Data's Lance sink needs pylance
    except ImportError:
        raise MissingDependencyError(f"the distributed build writes Lance datasets with pylance: {RAY_EXTRA}") from None
    out = Path(out)
    _check_out(out)
    shards = item_shards(items)
    batch_size = check_positive("batch_size", batch_size)
    chunk_rows = check_positive("chunk_rows", chunk_rows)
    if actors is not None:
        actors = check_positive("actors", actors)
    if isinstance(cpus_per_actor, bool) or not isinstance(cpus_per_actor, (int, float)) or not cpus_per_actor > 0:
        raise InvalidInputError("cpus_per_actor", cpus_per_actor, "must be a number > 0")
    if gpus_per_actor is not None and (isinstance(gpus_per_actor, bool) or not isinstance(gpus_per_actor, (int, float))
                                       or gpus_per_actor < 0):
        raise InvalidInputError("gpus_per_actor", gpus_per_actor, "must be a number >= 0")
    if embedder is not None and not callable(embedder):
        raise InvalidInputError("embedder", type(embedder).__name__, "must be a callable each actor calls to make its "
                                "embedder (a class, or functools.partial of one), not an embedder")
    backend = resolve_backend(config.embedding_backend)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:12]}"
    work.mkdir()  # as Engine.create makes a directory (the umask's mode, unlike mkdtemp's 0700)
    place: Path | None = None
    try:
        with ray_session(address, num_cpus=num_cpus) as ray:
            store = Store(work, config)
            t_read = time.perf_counter()
            catalog = read_catalog(ray, shards, config.template or DEFAULT_TEMPLATE)
            store.catalog.validate(catalog.items)  # the single-process build's whole-batch checks
            store.check_field_kinds(catalog.items)
            read_s = time.perf_counter() - t_read
            gpus = _gpus(ray, gpus_per_actor, backend)
            pool = actors or _pool_size(ray, cpus_per_actor, gpus)
            make = embedder or _default_embedder(config, backend, "cuda" if gpus else "cpu")
            place = _staging(ray, staging, work)
            uri = str(place / f"{_TABLE}.lance")
            t_embed = time.perf_counter()
            if catalog.items:
                embedded = _spread(catalog.dataset, len(catalog.items), batch_size, pool).map_batches(
                    EmbedBatches, batch_format="pyarrow", batch_size=batch_size,
                    compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=cpus_per_actor, num_gpus=gpus,
                    fn_constructor_kwargs={"embedder": make, "backend": backend, "offsets": catalog.offsets,
                                           "fields": _field_kinds(catalog.items)})
                embedded.write_lance(uri)
                vectors = _read_vectors(uri, len(catalog.items))
            else:  # no items: the dimension from an embedder made here (on this machine's CPU)
                dim = (embedder or _default_embedder(config, backend, "cpu"))().dim
                vectors = np.zeros((0, dim), dtype=np.float32)
            embed_s = time.perf_counter() - t_embed
        t_assemble = time.perf_counter()
        _assemble(store, catalog.items, vectors, catalog.hashes, place, chunk_rows)
        try:
            os.rename(work, out)  # onto nothing, or onto an empty directory: atomic
        except OSError as exc:
            raise StoreError(f"engine directory {out}: cannot move the finished build into place ({exc})") from None
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if place is not None:
            shutil.rmtree(place, ignore_errors=True)
        raise
    assemble_s = time.perf_counter() - t_assemble
    return BuildReport(out, len(catalog.items), pool, gpus, read_s, embed_s, assemble_s, time.perf_counter() - t0)


def _assemble(store: Store, items: list[Item], vectors: np.ndarray, hashes: list[str], staging: Path,
              chunk_rows: int) -> None:
    """The engine directory in ``store.directory``: items in catalog order, the index, the config
    and one snapshot, written by the engine's own code; the Lance staging folder removed after."""
    config = store.config
    make_index, fill = _ASSEMBLY[config.backend]
    dim = int(vectors.shape[1])
    try:
        index = make_index(config, dim, staging) if len(items) else None
        store.init_empty(dim, index)
        fill(store, items, vectors, hashes, chunk_rows)
        atomic_write_text(store.directory / CONFIG_FILE, config.to_toml())
        store.save()
    finally:
        store.close()
    shutil.rmtree(staging, ignore_errors=True)


def _spread(dataset: Any, n: int, batch_size: int, pool: int) -> Any:
    """``dataset`` in enough blocks for every actor of the pool to get some (a block goes to one
    actor whole): one per batch, at most 16 per actor, never fewer than it has. Repartitioned
    here, before the actors start: a pool that holds every CPU would starve the shuffle's tasks."""
    blocks = min(-(-n // batch_size), 16 * pool)
    return dataset.repartition(blocks).materialize() if blocks > dataset.num_blocks() else dataset


def _gpus(ray: Any, gpus_per_actor: float | None, backend: str) -> float:
    if gpus_per_actor is not None:
        return float(gpus_per_actor)
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and backend in _TORCH_BACKENDS else 0.0


def _pool_size(ray: Any, cpus_per_actor: float, gpus: float) -> int:
    """As many actors as the cluster holds: one per GPU share, else per ``cpus_per_actor`` CPUs."""
    resources = ray.cluster_resources()
    if gpus:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9)))


def _staging(ray: Any, staging: str | Path | None, work: Path) -> Path:
    """Where the Lance dataset is written: ``staging`` (a fresh folder inside it), else inside the
    directory being built, which only works when every worker runs on this machine."""
    if staging is None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1:
            raise InvalidInputError("staging", None, f"the cluster has {len(nodes)} machines: give a folder every "
                                    "one of them can reach (a shared filesystem) for the embedded rows")
        return work / "staging"
    Path(staging).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="recsieve-build-", dir=staging))
