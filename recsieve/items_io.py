"""Reading item files: JSONL, CSV and Parquet records -> validated :class:`~recsieve.types.Item`.

Record format (one JSON object per line in JSONL, one row in Parquet)::

    {"id": "b-1", "title": "Dune", "description": "Desert planet epic.",
     "categories": ["books", "sci-fi"], "attributes": {"author": "Frank Herbert"},
     "metadata": {"price": 9.5, "year": 1965}}

``title``, ``description``, ``categories`` and ``attributes`` (string -> string) are text
rendered into what gets embedded; ``metadata`` holds scalars (str, int, float, bool) kept
for filtering. Flat records work too: any other top-level scalar key (``"price": 9.5``)
goes to metadata, and ``attributes.<name>`` / ``metadata.<name>`` keys go to those maps.
CSV files have a header; ``categories`` is a ``|``-separated cell, cells are stripped,
an empty cell is absent, and each metadata column gets one type inferred from all its
cells (int, float, bool ``true``/``false``, else string; ``007`` stays a string).

Every item is validated by :func:`recsieve.validation.check_item`; errors name the file,
line (Parquet: row) and field.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsieve.errors import DuplicateIdError, InvalidInputError
from recsieve.types import Item
from recsieve.validation import RESERVED_FIELDS, check_item

__all__ = [
    "ItemsRead", "read_items", "scan_items", "item_records", "record_unit", "ITEM_FILE_SUFFIXES",
    "item_from_record", "NOT_UTF8_RE",
]

#: Matches the lone surrogates that ``decode("utf-8", errors="surrogateescape")`` leaves for
#: bytes that are not UTF-8, so a reader can report the very line that holds them.
NOT_UTF8_RE = re.compile("[\udc80-\udcff]")

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: The file name endings of item files (lower case).
ITEM_FILE_SUFFIXES = tuple(_SUFFIXES)
_INT_RE = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def item_from_record(record: Any, where: str = "record: ") -> Item:
    """Build and validate an :class:`Item` from one file record (see the module docstring).

    ``None`` values mean absent. Errors name ``where`` + the field.
    """
    if not isinstance(record, Mapping):
        raise InvalidInputError(where.rstrip(".: ") or "record", type(record).__name__, "must be a JSON object")
    item_id = record.get("id")
    if item_id is None:
        raise InvalidInputError(f"{where}id", None, "missing; every item needs a string id")
    if not isinstance(item_id, str):
        raise InvalidInputError(f"{where}id", item_id, "must be a string (quote numeric ids)")
    text: dict[str, str] = {}
    for name in ("title", "description"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"{where}{name}", value, "must be a string")
        text[name] = value or ""
    cats = record.get("categories")
    if cats is None:
        cats = ()
    elif isinstance(cats, str) or not isinstance(cats, (list, tuple)):
        raise InvalidInputError(f"{where}categories", cats, "must be a list of strings")
    attributes = _mapping(record.get("attributes"), f"{where}attributes")
    metadata = _mapping(record.get("metadata"), f"{where}metadata")
    for key, value in record.items():
        if key in RESERVED_FIELDS or value is None:
            continue
        if not isinstance(key, str):
            raise InvalidInputError(where.rstrip(".: ") or "record", key, "keys must be strings")
        if key.startswith("attributes."):
            target, name = attributes, key[len("attributes.") :]
        elif key.startswith("metadata."):
            target, name = metadata, key[len("metadata.") :]
        else:
            target, name = metadata, key
        if name in target:
            raise InvalidInputError(f"{where}{key}", value, f"{name!r} is given twice")
        if target is metadata and isinstance(value, (list, tuple, dict)):
            raise InvalidInputError(
                f"{where}{key}", value, "nested values are not allowed at the top level; "
                "only id/title/description/categories/attributes/metadata may be lists or objects"
            )
        target[name] = value
    return check_item(
        Item(item_id, text["title"], text["description"], tuple(cats), attributes, metadata), where
    )


def _mapping(value: Any, fld: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in value):
        value = dict(value)  # a Parquet map column reads back as a list of pairs
    if not isinstance(value, Mapping):
        raise InvalidInputError(fld, value, "must be an object (a mapping)")
    return {k: v for k, v in value.items() if v is not None}


# -- reading files ------------------------------------------------------------------------


@dataclass
class ItemsRead:
    """What :func:`scan_items` found: the valid items, in file order, and the skipped lines' errors."""

    items: list[Item]
    errors: list[InvalidInputError] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """How many lines were skipped."""
        return len(self.errors)


def read_items(path: str | Path, *, skip_invalid: bool = False) -> list[Item]:
    """Items of a ``.jsonl`` (``.ndjson``), ``.csv`` or ``.parquet`` file, in file order.

    Any invalid line raises an :class:`InvalidInputError` naming the file, line (Parquet:
    row) and field, e.g. ``items.jsonl line 12: id``; a repeated id raises
    :class:`DuplicateIdError` naming both lines. With ``skip_invalid=True`` bad lines are
    skipped instead (a repeated id keeps its first line); use :func:`scan_items` to learn
    how many and why. Blank lines are ignored.
    """
    return scan_items(path, skip_invalid=skip_invalid).items


def scan_items(path: str | Path, *, skip_invalid: bool = False) -> ItemsRead:
    """Like :func:`read_items`, returning the items and the errors of skipped lines."""
    path = Path(path)
    out = ItemsRead([])
    first_line: dict[str, int] = {}
    unit = record_unit(path)
    for line, got in item_records(path):
        try:
            if isinstance(got, InvalidInputError):
                raise got
            if got.id in first_line:
                raise DuplicateIdError(f"{path.name} {unit} {line}: id", got.id,
                                       f"duplicate of the id on {unit} {first_line[got.id]}")
        except InvalidInputError as exc:
            if not skip_invalid:
                raise
            out.errors.append(exc)
            continue
        first_line[got.id] = line
        out.items.append(got)
    return out


def record_unit(path: str | Path) -> str:
    """What errors call a record of the item file ``path``: ``"row"`` (Parquet) or ``"line"``."""
    return "row" if _SUFFIXES.get(Path(path).suffix.lower()) == "parquet" else "line"


def item_records(path: str | Path) -> Iterator[tuple[int, Item | InvalidInputError]]:
    """Each record of an item file in file order with its line (Parquet: row): the validated
    :class:`Item`, or the :class:`InvalidInputError` naming that line and field. Blank lines are
    skipped; ids are not compared (:func:`scan_items` refuses a repeated one).

    A path that is no item file raises here, before anything is read; a file that cannot be read
    on (broken CSV quoting, an unreadable Parquet file) raises where reading stops.
    """
    path = Path(path)
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(
            "path", str(path), f"unknown item file type; expected one of {sorted(_SUFFIXES)}"
        )
    if path.is_dir():
        raise InvalidInputError("path", str(path), f"is a directory; expected a {path.suffix} file")
    if not path.is_file():
        raise InvalidInputError("path", str(path), "no such file")
    records = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}[kind](path)
    return _validated(path, records)


def _validated(path: Path, records: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Item | InvalidInputError]]:
    unit = record_unit(path)
    for line, record in records:
        if isinstance(record, InvalidInputError):
            yield line, record
            continue
        try:
            yield line, item_from_record(record, f"{path.name} {unit} {line}: ")
        except InvalidInputError as exc:
            yield line, exc


def _decode(data: bytes) -> str:
    """UTF-8 text; bad bytes become lone surrogates that the line parser reports."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def _bad_utf8(where: str, text: str) -> InvalidInputError:
    return InvalidInputError(where, text[:40].encode("utf-8", "surrogateescape"), "not valid UTF-8")


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    text = _decode(path.read_bytes())
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        if NOT_UTF8_RE.search(line):
            yield n, _bad_utf8(where, line)
            continue
        try:
            yield n, json.loads(line)
        except ValueError as exc:
            yield n, InvalidInputError(where, line[:40], f"malformed JSON: {exc}")


def _csv_records(path: Path) -> Iterator[tuple[int, Any]]:
    text = _decode(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for cells in reader:
            rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as exc:  # broken quoting: the rest of the file cannot be trusted
        raise InvalidInputError(f"{path.name} line {start}", path.name, f"malformed CSV: {exc}") from None
    rows = [(n, cells) for n, cells in rows if any(c.strip() for c in cells)]
    if not rows:
        return
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    where = f"{path.name} line {header_line}"
    for h in header:
        if not h or NOT_UTF8_RE.search(h):
            raise InvalidInputError(f"{where}: header", h, "column names must be non-empty UTF-8 text")
        if header.count(h) > 1:
            raise InvalidInputError(f"{where}: header", h, "column appears twice")
    if "id" not in header:
        raise InvalidInputError(f"{where}: id", header, "the header has no id column")
    body = rows[1:]
    types = {
        col: _infer([cells[j].strip() for _, cells in body if j < len(cells)])
        for j, col in enumerate(header)
        if col not in RESERVED_FIELDS and not col.startswith("attributes.")
    }
    for n, cells in body:
        where = f"{path.name} line {n}"
        if len(cells) != len(header):
            yield n, InvalidInputError(where, len(cells), f"has {len(cells)} cells; the header has {len(header)}")
            continue
        bad = next((c for c in cells if NOT_UTF8_RE.search(c)), None)
        if bad is not None:
            yield n, _bad_utf8(where, bad)
            continue
        record: dict[str, Any] = {}
        for col, cell in zip(header, cells, strict=True):
            cell = cell.strip()
            if not cell:
                continue
            if col == "categories":
                record[col] = [c.strip() for c in cell.split("|") if c.strip()]
            elif col in types:
                record[col] = types[col](cell)
            else:
                record[col] = cell
        yield n, record


def _infer(cells: list[str]) -> Any:
    """One type for a CSV metadata column: int, float, bool or str."""
    values = [c for c in cells if c]
    if values and all(_INT_RE.fullmatch(v) for v in values):
        return int
    if values and all(_FLOAT_RE.fullmatch(v) for v in values):
        return float
    if values and all(v.lower() in ("true", "false") for v in values):
        return lambda v: v.lower() == "true"
    return str


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()
        n = 0
        for batch in batches:
            for record in batch.to_pylist():
                n += 1
                yield n, record
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) / OSError
        raise InvalidInputError("path", str(path), f"not a readable Parquet file: {exc}") from None
