"""The item catalog: external string ids <-> stable int64 rows, item text, versions.

Items come from JSONL, CSV or Parquet files (:func:`read_items`) or are built in Python
(:class:`~recsieve.types.Item`). A :class:`Catalog` assigns each id an int64 *row* that the
vector indexes use. Rows are never renumbered: a removed item leaves a tombstone, and an id
that is removed and later added again gets **its old row back** (the id <-> row mapping is
permanent, so events journaled against a row keep meaning the same item).

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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import keyword
import math
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import (
    CorruptStoreError,
    DuplicateIdError,
    IncompatibleVersionError,
    InvalidInputError,
    UnknownItemError,
)
from recsieve.types import Item, Scalar

__all__ = [
    "DEFAULT_TEMPLATE",
    "MAX_TEXT_CHARS",
    "MAX_ID_CHARS",
    "Template",
    "ItemsRead",
    "Catalog",
    "read_items",
    "scan_items",
    "check_item",
    "item_from_record",
    "render",
    "content_hash",
]

#: How an item becomes the text that is embedded (see :class:`Template`).
DEFAULT_TEMPLATE = "{title}. {categories}. {description}. {attributes}"
#: Most characters of text one item may hold (title, description, categories, attributes,
#: string metadata together, and its rendered text).
MAX_TEXT_CHARS = 100_000
#: Longest item id.
MAX_ID_CHARS = 512

_FORMAT = "recsieve.catalog"
_FORMAT_VERSION = 1
_FILE = "catalog.jsonl"
_RESERVED = frozenset({"id", "title", "description", "categories", "attributes", "metadata"})
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
_SEPARATORS = " \t.,;:|-–—/"
_INT64 = (-(2**63), 2**63 - 1)
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


# -- templates ----------------------------------------------------------------------------


class Template:
    """A validated rendering template such as ``"{title}. {categories}. {description}"``.

    Fields are referenced by bare name only: ``title``, ``description``, ``categories``
    (joined with ``", "``), ``attributes`` (all of them, ``"key: value; key: value"``),
    ``id``, or any single attribute or metadata key. Conversions (``{x!r}``), format specs
    (``{x:>10}``) and attribute or index access (``{x.__class__}``, ``{x[0]}``) are rejected
    when the template is built; it is rendered by substitution, never ``str.format``.

    Empty parts collapse: a field that renders empty is dropped together with the literal
    text before it (its separator or label), and when nothing has been written yet the
    literal after it loses its leading separators, so ``"{title}. {categories}. {x}"`` with
    no categories gives ``"Title. x"``, not ``"Title. . x"``. A literal that starts with a
    period right after a value ending in ``.``, ``!`` or ``?`` drops that period. Whitespace
    is collapsed to single spaces. Nothing is truncated.

    >>> Template("{title} ({year})").render(Item("a", title="Heat", metadata={"year": 1995}))
    'Heat (1995)'
    """

    def __init__(self, source: str = DEFAULT_TEMPLATE) -> None:
        if not isinstance(source, str):
            raise InvalidInputError("template", source, "must be a string")
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise InvalidInputError("template", source, f"not a valid template: {exc}") from None
        literals: list[str] = []
        names: list[str] = []
        pending = ""
        for literal, name, spec, conversion in parsed:
            pending += literal
            if name is None:
                continue
            if not _NAME_RE.fullmatch(name):
                raise InvalidInputError(
                    "template", source, f"field {{{name}}} must be a bare name such as {{title}}"
                )
            if conversion is not None or spec:
                raise InvalidInputError(
                    "template", source, f"field {{{name}}} may not carry a conversion or format spec"
                )
            literals.append(pending)
            names.append(name)
            pending = ""
        if not names:
            raise InvalidInputError("template", source, "must reference at least one field, e.g. {title}")
        self.source = source
        self.fields: tuple[str, ...] = tuple(names)
        self._literals = tuple(literals)
        self._tail = pending

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def render(self, item: Item) -> str:
        """The text of ``item`` under this template (whitespace collapsed, empty parts dropped)."""
        out: list[str] = []
        dropped = False
        for literal, name in zip(self._literals, self.fields, strict=True):
            value = " ".join(_field_text(item, name).split())
            if not value:
                dropped = True
                continue
            if not out and dropped:
                literal = literal.lstrip(_SEPARATORS)
            out.append(_join_literal(out, literal))
            out.append(value)
        if out:
            out.append(_join_literal(out, self._tail))
        return " ".join("".join(out).split())


def _join_literal(out: list[str], literal: str) -> str:
    if out and literal.startswith(".") and out[-1].endswith((".", "!", "?")):
        return literal[1:]
    return literal


def _field_text(item: Item, name: str) -> str:
    if name == "title":
        return item.title
    if name == "description":
        return item.description
    if name == "id":
        return item.id
    if name == "categories":
        return ", ".join(c.strip() for c in item.categories if c.strip())
    if name == "attributes":
        return "; ".join(f"{k}: {v.strip()}" for k, v in item.attributes.items() if v.strip())
    if name in item.attributes:
        return item.attributes[name]
    if name in item.metadata:
        return str(item.metadata[name])
    return ""


def render(item: Item, template: str | Template = DEFAULT_TEMPLATE) -> str:
    """The text of ``item`` that gets embedded, under ``template`` (see :class:`Template`).

    >>> render(Item("a", title="Dune", description="Desert epic.", categories=("books",)))
    'Dune. books. Desert epic.'
    """
    if not isinstance(template, Template):
        template = Template(template)
    return template.render(item)


def content_hash(text: str) -> str:
    """sha256 hex digest of ``text`` in UTF-8: stable across processes and machines.

    >>> content_hash("")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- item validation ----------------------------------------------------------------------


def _is_name(key: str) -> bool:
    return bool(_NAME_RE.fullmatch(key)) and not keyword.iskeyword(key) and key not in ("true", "false")


def _scalar(value: Any, fld: str) -> Scalar:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidInputError(fld, value, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(fld, value, "numbers must be finite")
        return value
    if isinstance(value, (list, tuple, dict, set)):
        raise InvalidInputError(fld, value, "metadata values must be scalars (str, int, float, bool), not nested")
    raise InvalidInputError(fld, value, f"metadata values must be str, int, float or bool, not {type(value).__name__}")


def check_item(item: Any, where: str = "item.") -> Item:
    """Validate ``item`` and return a normalised copy (tuple categories, fresh dicts).

    ``where`` prefixes field names in errors (``"items[3]."`` or ``"items.csv line 4: "``).
    Raises :class:`InvalidInputError` naming the field on: an id that is not a non-empty
    string without surrounding spaces (at most :data:`MAX_ID_CHARS`); non-string text
    fields; categories that are not a list of non-empty strings; attributes that are not a
    string -> string map; metadata keys that are not identifiers usable in filters (or are
    reserved: ``id``, ``title``, ...), nested or non-finite metadata values; a key in both
    attributes and metadata; no text at all; more than :data:`MAX_TEXT_CHARS` of text.
    """
    if not isinstance(item, Item):
        raise InvalidInputError(where.rstrip(".: ") or "item", type(item).__name__, "expected a recsieve.Item")
    item_id = item.id
    if not isinstance(item_id, str):
        raise InvalidInputError(f"{where}id", item_id, "must be a string (quote numeric ids)")
    if not item_id or item_id != item_id.strip():
        raise InvalidInputError(f"{where}id", item_id, "must be non-empty, without leading or trailing spaces")
    if len(item_id) > MAX_ID_CHARS:
        raise InvalidInputError(f"{where}id", item_id, f"longer than {MAX_ID_CHARS} characters")
    for name in ("title", "description"):
        if not isinstance(getattr(item, name), str):
            raise InvalidInputError(f"{where}{name}", getattr(item, name), "must be a string")
    cats = item.categories
    if isinstance(cats, str) or not isinstance(cats, (list, tuple)):
        raise InvalidInputError(f"{where}categories", cats, "must be a list of strings")
    for i, c in enumerate(cats):
        if not isinstance(c, str) or not c.strip():
            raise InvalidInputError(f"{where}categories[{i}]", c, "must be a non-empty string")
    if not isinstance(item.attributes, Mapping):
        raise InvalidInputError(f"{where}attributes", item.attributes, "must be a mapping of strings to strings")
    for key, value in item.attributes.items():
        if not isinstance(key, str) or not key.strip() or key in _RESERVED:
            raise InvalidInputError(f"{where}attributes", key, "keys must be non-empty strings, not a reserved name")
        if not isinstance(value, str):
            raise InvalidInputError(
                f"{where}attributes.{key}", value, "attribute values are text; put numbers in metadata"
            )
    if not isinstance(item.metadata, Mapping):
        raise InvalidInputError(f"{where}metadata", item.metadata, "must be a mapping of names to scalars")
    metadata: dict[str, Scalar] = {}
    for key, value in item.metadata.items():
        if not isinstance(key, str) or not _is_name(key) or key in _RESERVED:
            raise InvalidInputError(
                f"{where}metadata", key, "keys must be identifiers usable in filters (letters, digits, _), "
                "not keywords or reserved names"
            )
        if key in item.attributes:
            raise InvalidInputError(f"{where}metadata.{key}", key, "is both an attribute and a metadata key")
        metadata[key] = _scalar(value, f"{where}metadata.{key}")
    size = len(item.title) + len(item.description) + sum(map(len, cats))
    size += sum(len(k) + len(v) for k, v in item.attributes.items())
    size += sum(len(v) for v in metadata.values() if isinstance(v, str))
    if size > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{where}text", size, f"more than {MAX_TEXT_CHARS} characters of text")
    has_text = (
        item.title.strip() or item.description.strip() or cats or any(v.strip() for v in item.attributes.values())
    )
    if not has_text:
        raise InvalidInputError(
            f"{where}text", item_id, "item has no text: give a title, description, categories or attributes"
        )
    return Item(
        id=item_id,
        title=item.title,
        description=item.description,
        categories=tuple(cats),
        attributes=dict(item.attributes),
        metadata=metadata,
    )


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
        if key in _RESERVED or value is None:
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
    out = ItemsRead([])
    first_line: dict[str, int] = {}
    unit = "row" if kind == "parquet" else "line"
    for line, record in records:
        where = f"{path.name} {unit} {line}: "
        try:
            if isinstance(record, InvalidInputError):
                raise record
            item = item_from_record(record, where)
            if item.id in first_line:
                raise DuplicateIdError(f"{where}id", item.id, f"duplicate of the id on {unit} {first_line[item.id]}")
        except InvalidInputError as exc:
            if not skip_invalid:
                raise
            out.errors.append(exc)
            continue
        first_line[item.id] = line
        out.items.append(item)
    return out


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
        if _SURROGATE_RE.search(line):
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
        if not h or _SURROGATE_RE.search(h):
            raise InvalidInputError(f"{where}: header", h, "column names must be non-empty UTF-8 text")
        if header.count(h) > 1:
            raise InvalidInputError(f"{where}: header", h, "column appears twice")
    if "id" not in header:
        raise InvalidInputError(f"{where}: id", header, "the header has no id column")
    body = rows[1:]
    types = {
        col: _infer([cells[j].strip() for _, cells in body if j < len(cells)])
        for j, col in enumerate(header)
        if col not in _RESERVED and not col.startswith("attributes.")
    }
    for n, cells in body:
        where = f"{path.name} line {n}"
        if len(cells) != len(header):
            yield n, InvalidInputError(where, len(cells), f"has {len(cells)} cells; the header has {len(header)}")
            continue
        bad = next((c for c in cells if _SURROGATE_RE.search(c)), None)
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


# -- the catalog --------------------------------------------------------------------------


class Catalog:
    """Items by id, each at a stable int64 row; renders item text under a template.

    Rows count up from 0 in order of first appearance and are never renumbered; removing
    an item leaves a tombstone, and re-adding its id reuses its old row. ``version`` bumps
    on every change. Writers must be serialised by the caller (the engine holds a lock);
    readers may run concurrently with a writer without crashing (plain dicts and lists;
    cached texts are checked against the item they were rendered from).
    """

    def __init__(self, template: str | Template = DEFAULT_TEMPLATE) -> None:
        self._template = template if isinstance(template, Template) else Template(template)
        self._row_of: dict[str, int] = {}  # every id ever added -> its row
        self._ids: list[str] = []  # row -> id (permanent)
        self._items: list[Item | None] = []  # row -> live item or None (tombstone)
        self._texts: dict[int, tuple[Item, str]] = {}
        self._live = 0
        self.version = 0

    # -- reading ---------------------------------------------------------------------------

    @property
    def template(self) -> str:
        """The template source text."""
        return self._template.source

    @property
    def num_rows(self) -> int:
        """1 + the highest row ever assigned (live rows and tombstones)."""
        return len(self._ids)

    def __len__(self) -> int:
        return self._live

    def __contains__(self, item_id: object) -> bool:
        row = self._row_of.get(item_id) if isinstance(item_id, str) else None
        return row is not None and self._items[row] is not None

    def __iter__(self) -> Iterator[Item]:
        return (it for it in list(self._items) if it is not None)

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items, {self.num_rows} rows, version {self.version})"

    def is_live(self, row: int) -> bool:
        """Whether ``row`` holds an item now (False for tombstones and rows never assigned)."""
        return 0 <= row < len(self._items) and self._items[int(row)] is not None

    def live_rows(self) -> np.ndarray:
        """Rows that hold an item, ascending, int64."""
        return np.array([r for r, it in enumerate(list(self._items)) if it is not None], dtype=np.int64)

    def row(self, item_id: str) -> int:
        """The row of a live item; :class:`UnknownItemError` otherwise."""
        if item_id not in self:
            raise UnknownItemError("item_id", item_id)
        return self._row_of[item_id]

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of live items, in order (int64); an unknown id raises naming ``ids[i]``."""
        out = []
        for i, item_id in enumerate(ids):
            if item_id not in self:
                raise UnknownItemError(f"ids[{i}]", item_id)
            out.append(self._row_of[item_id])
        return np.array(out, dtype=np.int64)

    def _live_item(self, row: Any) -> Item:
        try:
            r = int(row)
        except (TypeError, ValueError):
            raise UnknownItemError("row", row) from None
        item = self._items[r] if 0 <= r < len(self._items) else None
        if item is None:
            raise UnknownItemError("row", row)
        return item

    def item_id(self, row: int) -> str:
        """The id of the live item at ``row``."""
        return self._live_item(row).id

    def get(self, item_id: str) -> Item:
        """The live item with ``item_id``."""
        return self._items[self.row(item_id)]  # type: ignore[return-value]

    def item_at(self, row: int) -> Item:
        """The live item at ``row``."""
        return self._live_item(row)

    def metadata(self, row: int) -> Mapping[str, Scalar]:
        """Metadata of the live item at ``row`` (do not mutate it)."""
        return self._live_item(row).metadata

    def title(self, row: int) -> str:
        """A display name for ``row``: the title, else the id. Removed rows answer with their
        id, since events keep pointing at them; rows never assigned raise."""
        if not 0 <= int(row) < len(self._ids):
            raise UnknownItemError("row", row)
        item = self._items[int(row)]
        return (item.title.strip() or item.id) if item is not None else self._ids[int(row)]

    def text(self, row: int) -> str:
        """The rendered text of the live item at ``row`` (cached)."""
        item = self._live_item(row)
        cached = self._texts.get(int(row))
        if cached is not None and cached[0] is item:
            return cached[1]
        text = self._template.render(item)
        self._texts[int(row)] = (item, text)
        return text

    def render(self, item: Item) -> str:
        """The text ``item`` would have in this catalog (it need not be in it)."""
        return self._template.render(item)

    def is_current(self, item: Item) -> bool:
        """Whether ``item`` is exactly the live item with its id (so upserting it changes nothing).

        Stricter than ``==``: a metadata value of another type (``1`` vs ``True`` vs ``1.0``,
        which filters tell apart) or attributes in another order (the rendered text follows
        it) count as a change.
        """
        row = self._row_of.get(item.id) if isinstance(item.id, str) else None
        old = self._items[row] if row is not None else None
        return old is not None and _same_item(old, item)

    # -- writing ---------------------------------------------------------------------------

    def validate(self, items: Iterable[Item]) -> list[Item]:
        """Check a batch as :meth:`upsert` would, changing nothing; return normalised items.

        Errors name ``items[i].<field>``; a repeated id raises :class:`DuplicateIdError`;
        an item whose rendered text is empty or longer than :data:`MAX_TEXT_CHARS` is refused.
        """
        if isinstance(items, (Item, str)):
            raise InvalidInputError("items", type(items).__name__, "expected a sequence of items")
        out: list[Item] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(items):
            item = check_item(raw, f"items[{i}].")
            if item.id in seen:
                raise DuplicateIdError(f"items[{i}].id", item.id, f"duplicate of items[{seen[item.id]}] in one batch")
            seen[item.id] = i
            text = self._template.render(item)
            if not text:
                raise InvalidInputError(f"items[{i}].text", item.id, f"renders empty with template {self.template!r}")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInputError(f"items[{i}].text", len(text), f"renders to more than {MAX_TEXT_CHARS} characters")
            out.append(item)
        return out

    def upsert(self, items: Iterable[Item]) -> np.ndarray:
        """Add or replace items; return their rows (int64, batch order).

        The whole batch is validated first (see :meth:`validate`); on error nothing changes.
        New ids get the next row; known ids (live or removed) keep their row.
        """
        batch = self.validate(items)
        rows = np.empty(len(batch), dtype=np.int64)
        changed = False
        for i, item in enumerate(batch):
            row = self._row_of.get(item.id)
            if row is None:
                row = len(self._ids)
                self._ids.append(item.id)
                self._items.append(None)
                self._row_of[item.id] = row
            old = self._items[row]
            if old is None:
                self._live += 1
            if old is None or not _same_item(old, item):
                self._items[row] = item
                self._texts.pop(row, None)
                changed = True
            rows[i] = row
        if changed:
            self.version += 1
        return rows

    def remove(self, ids: Iterable[str]) -> np.ndarray:
        """Remove live items by id; return their rows (int64, first-occurrence order, no repeats).

        An unknown (or already removed) id raises :class:`UnknownItemError` naming ``ids[i]``
        and nothing changes.
        """
        if isinstance(ids, str):
            raise InvalidInputError("ids", ids, "expected a sequence of ids, not one string")
        ids = list(dict.fromkeys(self.rows(list(ids)).tolist()))  # validates every id first
        for row in ids:
            self._items[row] = None
            self._texts.pop(row, None)
        self._live -= len(ids)
        if ids:
            self.version += 1
        return np.array(ids, dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write ``catalog.jsonl`` into ``folder``: a header line, then one line per row
        (tombstones included). Atomicity is the caller's (``GenerationDir``)."""
        header = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "template": self.template,
            "num_rows": self.num_rows,
            "live": self._live,
            "version": self.version,
        }
        lines = [json.dumps(header, ensure_ascii=False)]
        for row, (item_id, item) in enumerate(zip(self._ids, self._items, strict=True)):
            entry = {"row": row, "item": item.to_dict()} if item is not None else {"row": row, "removed": item_id}
            lines.append(json.dumps(entry, ensure_ascii=False, allow_nan=False))
        (Path(folder) / _FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> Catalog:
        """Read a catalog written by :meth:`save`, exactly.

        A missing, truncated or malformed file raises :class:`CorruptStoreError` naming the
        line; a file of another format version raises :class:`IncompatibleVersionError`.
        """
        path = Path(folder) / _FILE
        try:
            lines = path.read_bytes().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(f"{path}: cannot read the catalog: {exc}") from None
        if lines[-1] != "":
            raise CorruptStoreError(f"{path} line {len(lines)}: truncated (no final newline)")
        lines.pop()
        header = _load_line(path, lines, 1)
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise CorruptStoreError(f"{path} line 1: not a recsieve catalog header")
        if header.get("format_version") != _FORMAT_VERSION:
            raise IncompatibleVersionError(
                f"{path}: catalog format version {header.get('format_version')!r}; this recsieve reads {_FORMAT_VERSION}"
            )
        try:
            cat = cls(header["template"])
            num_rows, live, version = (int(header[k]) for k in ("num_rows", "live", "version"))
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise CorruptStoreError(f"{path} line 1: bad header: {exc}") from None
        if len(lines) - 1 != num_rows:
            raise CorruptStoreError(f"{path}: header says {num_rows} rows, file has {len(lines) - 1} (truncated?)")
        for row in range(num_rows):
            n = row + 2
            entry = _load_line(path, lines, n)
            if not isinstance(entry, dict) or entry.get("row") != row:
                raise CorruptStoreError(f"{path} line {n}: expected the entry of row {row}")
            try:
                if "item" in entry:
                    item = item_from_record(entry["item"], f"{path.name} line {n}: ")
                else:
                    item = None
                    item_id = entry.get("removed")
                    if not isinstance(item_id, str) or not item_id:
                        raise InvalidInputError(f"{path.name} line {n}: removed", item_id, "must be an item id")
            except InvalidInputError as exc:
                raise CorruptStoreError(f"{path} line {n}: {exc}") from None
            item_id = item.id if item is not None else item_id
            if item_id in cat._row_of:
                raise CorruptStoreError(f"{path} line {n}: id {item_id!r} already has row {cat._row_of[item_id]}")
            cat._row_of[item_id] = row
            cat._ids.append(item_id)
            cat._items.append(item)
            cat._live += item is not None
        if cat._live != live:
            raise CorruptStoreError(f"{path}: header says {live} live items, file has {cat._live}")
        cat.version = version
        return cat


def _same_item(a: Item, b: Item) -> bool:
    """Same content exactly: ``==`` plus metadata types, signed zeros and key order."""
    return a == b and json.dumps(a.to_dict()) == json.dumps(b.to_dict())


def _load_line(path: Path, lines: Sequence[str], n: int) -> Any:
    if n > len(lines):
        raise CorruptStoreError(f"{path} line {n}: missing (truncated file)")
    try:
        return json.loads(lines[n - 1])
    except ValueError as exc:
        raise CorruptStoreError(f"{path} line {n}: malformed: {exc}") from None
