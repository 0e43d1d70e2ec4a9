"""Reading a catalog on Ray Data, with the single-process build's checks and errors.

A catalog is one item file or a folder of them (shards: ``.jsonl``, ``.csv``, ``.parquet``, read
in name order as if they were one file). Ray Data reads each shard in a task of its own with
:func:`recsieve.items_io.item_records` (the reader ``build-index`` uses), so every record gets the
same checks and an invalid one the same error, naming the shard, line and field. A task stops at
its shard's first invalid record and passes the error on as a row; the driver then takes the
records in catalog order and raises what the single-process build would have raised first: an
invalid record, or an id seen before (in the same shard, or in an earlier one). The checks that
need the whole batch (rendered text, one kind per metadata field) are the catalog's and the
store's own, run by the caller on the items returned here.

Rows are numbered in catalog order, as the single-process build numbers them: the row of a
record is its shard's first row (:attr:`CatalogRead.offsets`) plus its place in the shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsieve import errors
from recsieve.errors import DuplicateIdError, InvalidInputError
from recsieve.items_io import ITEM_FILE_SUFFIXES, item_from_record, item_records, record_unit
from recsieve.rendering import Template, content_hash
from recsieve.types import Item

__all__ = ["CatalogRead", "item_shards", "parse_shard", "read_catalog"]


def item_shards(path: str | Path) -> list[Path]:
    """The item files of ``path``: the file itself, or the item files of a folder sorted by name
    (files starting with ``.`` or ``_``, such as ``_SUCCESS``, are skipped). A path that is not an
    item file, a folder holding another kind of file or none at all, raises
    :class:`InvalidInputError` naming it, before anything is read."""
    path = Path(path)
    if not path.is_dir():
        item_records(path)  # the single-process build's checks of the path, reading nothing
        return [path]
    files = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
    for p in files:
        if p.suffix.lower() not in ITEM_FILE_SUFFIXES or not p.is_file():
            raise InvalidInputError("path", str(p), f"in the folder of item shards {path}: not an item file "
                                    f"(expected one of {sorted(ITEM_FILE_SUFFIXES)})")
    if not files:
        raise InvalidInputError("path", str(path), f"a folder without item files ({sorted(ITEM_FILE_SUFFIXES)})")
    return files


def _error_row(shard: int, ordinal: int, line: int, exc: InvalidInputError) -> dict[str, Any]:
    value = {"bytes": exc.value.hex()} if isinstance(exc.value, bytes) else {"json": exc.value}
    error = json.dumps({"class": type(exc).__name__, "field": exc.field, "value": value, "reason": exc.reason,
                        "message": str(exc)}, default=str)
    return {"shard": shard, "ordinal": ordinal, "line": line, "id": "", "item": "", "text": "", "hash": "",
            "error": error}


def _raise_error(error: str) -> None:
    """Raise the error a row carries (JSON, never pickle: the rows pass through shared storage): its
    class, field, reason and message as raised; its value too when JSON holds it (bytes included)."""
    got = json.loads(error)
    cls = getattr(errors, str(got.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, InvalidInputError)):
        cls = InvalidInputError
    value = got["value"]
    exc = cls(got["field"], bytes.fromhex(value["bytes"]) if "bytes" in value else value["json"], got["reason"])
    exc.args = (got["message"],)  # the message exactly as raised (a tuple or a key JSON changed keeps its text)
    raise exc


def parse_shard(task: dict[str, Any], template: str) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map`` over ``{"shard": i, "path": p}``: one row per item of the shard, in
    file order (``ordinal`` counts them), with its line, id, the :class:`Item` as JSON, its text
    under ``template`` and that text's hash; at the first invalid record, one row whose ``error``
    holds the error, and nothing after it."""
    shard, path = int(task["shard"]), Path(task["path"])
    render = Template(template).render
    ordinal, line = 0, 0
    try:
        for line, got in item_records(path):
            if isinstance(got, InvalidInputError):
                yield _error_row(shard, ordinal, line, got)
                return
            text = render(got)
            yield {"shard": shard, "ordinal": ordinal, "line": line, "id": got.id,
                   "item": json.dumps(got.to_dict()), "text": text,
                   "hash": content_hash(text), "error": ""}
            ordinal += 1
    except InvalidInputError as exc:  # the file cannot be read on (broken CSV quoting, bad Parquet)
        yield _error_row(shard, ordinal, line, exc)


@dataclass
class CatalogRead:
    """A catalog read on Ray: ``dataset`` holds one row per item (materialised: the embedding
    stage reads it), ``items`` and ``hashes`` are in catalog order, ``offsets[s]`` is the first
    row of shard ``s``."""

    dataset: Any
    items: list[Item]
    hashes: list[str]
    offsets: np.ndarray


def read_catalog(ray: Any, shards: list[Path], template: str) -> CatalogRead:
    """Read ``shards`` on Ray Data (a task per shard) and check them as the single-process build
    does; raises the error it would raise first (see the module docstring)."""
    tasks = [{"shard": i, "path": str(p.resolve())} for i, p in enumerate(shards)]
    source = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    dataset = source.flat_map(parse_shard, fn_kwargs={"template": template}).materialize()
    tables = [t for t in ray.get(dataset.to_arrow_refs()) if t.num_rows]
    if not tables:
        return CatalogRead(dataset, [], [], np.zeros(len(shards), np.int64))
    import pyarrow as pa

    table = pa.concat_tables(tables).sort_by([("shard", "ascending"), ("ordinal", "ascending")])
    columns = {name: table.column(name).to_pylist() for name in ("shard", "line", "id", "error")}
    first: dict[str, tuple[int, int]] = {}
    for shard, line, item_id, error in zip(columns["shard"], columns["line"], columns["id"], columns["error"]):
        if error:
            _raise_error(error)
        seen = first.setdefault(item_id, (shard, line))
        if seen != (shard, line):
            raise _duplicate(shards, item_id, shard, line, seen)
    items = [item_from_record(json.loads(s)) for s in table.column("item").to_pylist()]
    counts = np.bincount(np.asarray(columns["shard"], np.int64), minlength=len(shards))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return CatalogRead(dataset, items, table.column("hash").to_pylist(), offsets)


def _duplicate(shards: list[Path], item_id: str, shard: int, line: int, seen: tuple[int, int]) -> DuplicateIdError:
    """The single-process build's error for a repeated id; across shards it names the first one's."""
    unit = record_unit(shards[shard])
    first_shard, first_line = seen
    where = (f"on {unit} {first_line}" if first_shard == shard
             else f"in {shards[first_shard].name} {record_unit(shards[first_shard])} {first_line}")
    return DuplicateIdError(f"{shards[shard].name} {unit} {line}: id", item_id, f"duplicate of the id {where}")
