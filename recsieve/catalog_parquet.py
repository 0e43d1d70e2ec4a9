"""The catalog's snapshot file in a columnar format: ``catalog.parquet`` (Apache Parquet).

One table row per catalog row (tombstones included), in row order::

    id           string            the item id (a removed row keeps its id)
    live         bool              false: a tombstone (the other columns are null)
    title        string
    description  string
    categories   list<string>
    attr_keys    list<string>      attribute names, in the item's order
    attr_values  list<string>      their values
    layout       int32             which metadata layout the item has (see below)
    m0, m1, ...  int64 | double | bool | string   one column per (metadata key, type)

Metadata values keep their Python type exactly (``1``, ``1.0`` and ``True`` are told apart by
filters) and each item keeps its key order (rendered text and change detection follow it): a
*layout* is the ordered list of (key, column) an item uses, and the few distinct layouts of a
catalog are stored once in the file's key-value metadata (``recsieve.catalog``, JSON), with the
header (template, row counts, version) and the metadata columns' keys and types.

Reading keeps the columns and builds :class:`~recsieve.types.Item` objects only for the rows the
catalog is asked about (:class:`ParquetRows`, a block at a time), without parsing text line by
line or validating each item again (the file was written from validated items, and the
snapshot's checksums, with Parquet's page checksums, catch a damaged file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import CorruptStoreError
from recsieve.types import Item

__all__ = ["PARQUET_FILE", "ParquetRows", "write_catalog_parquet", "read_catalog_parquet"]

PARQUET_FILE = "catalog.parquet"
_KEY = b"recsieve.catalog"
#: metadata value type -> (code, Arrow type name)
_CODES = {bool: "b", int: "i", float: "f", str: "s"}


def _arrow_type(code: str) -> Any:
    import pyarrow as pa

    return {"b": pa.bool_(), "i": pa.int64(), "f": pa.float64(), "s": pa.string()}[code]


def write_catalog_parquet(path: str | Path, header: Mapping[str, Any], ids: Sequence[str],
                          items: Sequence[Item | None]) -> None:
    """Write ``items`` (``None``: a tombstone of ``ids[row]``) with ``header`` to ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(ids)
    columns: dict[tuple[str, str], int] = {}  # (key, type code) -> metadata column number
    layouts: dict[tuple[tuple[str, int], ...], int] = {}
    values: list[list[Any]] = []
    layout = [0] * n
    live, titles, descriptions, categories = [False] * n, [None] * n, [None] * n, [None] * n
    attr_keys: list[list[str] | None] = [None] * n
    attr_values: list[list[str] | None] = [None] * n
    for row, item in enumerate(items):
        if item is None:
            continue
        live[row], titles[row], descriptions[row] = True, item.title, item.description
        categories[row] = list(item.categories)
        attr_keys[row], attr_values[row] = list(item.attributes.keys()), list(item.attributes.values())
        shape = []
        for key, value in item.metadata.items():
            col = columns.setdefault((key, _CODES[type(value)]), len(columns))
            if col == len(values):
                values.append([None] * n)
            values[col][row] = value
            shape.append((key, col))
        layout[row] = layouts.setdefault(tuple(shape), len(layouts))
    table = {
        "id": pa.array(list(ids), pa.string()),
        "live": pa.array(live, pa.bool_()),
        "title": pa.array(titles, pa.string()),
        "description": pa.array(descriptions, pa.string()),
        "categories": pa.array(categories, pa.list_(pa.string())),
        "attr_keys": pa.array(attr_keys, pa.list_(pa.string())),
        "attr_values": pa.array(attr_values, pa.list_(pa.string())),
        "layout": pa.array(layout, pa.int32()),
    }
    for (_key, code), col in columns.items():
        table[f"m{col}"] = pa.array(values[col], _arrow_type(code))
    described = dict(header)
    described["metadata_columns"] = [[key, code] for (key, code), _col in sorted(columns.items(), key=lambda kv: kv[1])]
    described["layouts"] = [[[key, col] for key, col in shape] for shape in layouts]
    schema = pa.schema([(name, arr.type) for name, arr in table.items()],
                       metadata={_KEY: json.dumps(described, ensure_ascii=False).encode("utf-8")})
    pq.write_table(pa.Table.from_arrays(list(table.values()), schema=schema), str(path),
                   compression="zstd", write_page_checksum=True)


class ParquetRows:
    """The item rows of a catalog file, kept as Arrow columns; :meth:`build` makes the
    :class:`~recsieve.types.Item` objects of a range of rows (``None`` for tombstones) when the
    catalog first needs them, so opening a large catalog builds none."""

    def __init__(self, path: Path, table: Any, header: Mapping[str, Any]) -> None:
        self._path = path
        try:
            self._columns = [table.column(name) for name in _ITEM_COLUMNS]
            meta = [table.column(f"m{col}") for col in range(len(header["metadata_columns"]))]
            self._layouts = [tuple((str(key), int(col)) for key, col in shape) for shape in header["layouts"]]
            if any(not 0 <= col < len(meta) for shape in self._layouts for _key, col in shape):
                raise IndexError("a layout names a metadata column the file does not have")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptStoreError(f"{path}: columns do not match the catalog header ({exc!r})") from None
        self._meta = meta

    def build(self, lo: int, hi: int) -> list[Item | None]:
        """Rows ``lo..hi-1`` (``None``: a tombstone); a malformed row raises :class:`CorruptStoreError`."""
        n = hi - lo
        ids, live, titles, descriptions, categories, attr_keys, attr_values, layout_of = (
            c.slice(lo, n).to_pylist() for c in self._columns)
        used = {col for shape in {layout_of[i] for i in range(n) if live[i]} for _key, col in self._layouts[shape]}
        meta = {col: self._meta[col].slice(lo, n).to_pylist() for col in used}
        out: list[Item | None] = [None] * n
        try:
            for i in range(n):
                if not live[i]:
                    continue
                values = {key: meta[col][i] for key, col in self._layouts[layout_of[i]]}
                attrs = dict(zip(attr_keys[i], attr_values[i], strict=True)) if attr_keys[i] else {}
                out[i] = Item(ids[i], titles[i], descriptions[i], tuple(categories[i]), attrs, values)
        except (TypeError, ValueError, IndexError) as exc:
            raise CorruptStoreError(f"{self._path}: row {lo + i} is malformed ({exc!r})") from None
        return out


#: The per-row columns :class:`ParquetRows` reads, in :meth:`ParquetRows.build`'s order.
_ITEM_COLUMNS = ("id", "live", "title", "description", "categories", "attr_keys", "attr_values", "layout")


def read_catalog_parquet(path: str | Path) -> tuple[dict[str, Any], list[str], np.ndarray, ParquetRows]:
    """``(header, ids, live, rows)`` of a file :func:`write_catalog_parquet` wrote: ``live`` is a
    bool array (``False``: a tombstone), ``rows`` builds the items when asked (:class:`ParquetRows`).

    The whole file is read (Parquet's page checksums verified); a damaged or inconsistent file
    raises :class:`CorruptStoreError` naming it.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        # ParquetFile, not read_table: the latter imports pyarrow.dataset, and with it pandas (~1 s)
        table = pq.ParquetFile(str(path), page_checksum_verification=True).read()
        raw = (table.schema.metadata or {}).get(_KEY)
        header = json.loads(raw.decode("utf-8")) if raw is not None else None
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError), OSError; bad JSON
        raise CorruptStoreError(f"{path}: not a readable catalog file ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptStoreError(f"{path}: no recsieve catalog header in the file's metadata")
    rows = ParquetRows(path, table, header)
    try:
        id_column, live_column = table.column("id"), table.column("live")
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptStoreError(f"{path}: columns do not match the catalog header ({exc!r})") from None
    for name, column, kind in (("id", id_column, "string"), ("live", live_column, "bool")):
        if str(column.type) != kind or column.null_count:
            raise CorruptStoreError(f"{path}: column {name!r} must hold {kind} values, no nulls (has {column.type}, "
                                    f"{column.null_count} nulls)")
    # to_pylist, not to_numpy: the latter imports pandas (~0.6 s)
    return header, id_column.to_pylist(), np.array(live_column.to_pylist(), dtype=bool), rows
