"""The item catalog: external string ids <-> stable int64 rows, item text, versions.

A :class:`Catalog` assigns each item id an int64 *row* that the vector indexes use. Rows
are never renumbered: a removed item leaves a tombstone, and an id that is removed and later
added again gets **its old row back** (the id <-> row mapping is permanent, so events
journaled against a row keep meaning the same item). It renders item text under a
:class:`~recsieve.rendering.Template` and persists itself as ``catalog.parquet`` (columnar, see
:mod:`recsieve.catalog_parquet`); catalogs saved earlier as ``catalog.jsonl`` still load.

Beside it: :mod:`recsieve.items_io` reads item files (:func:`~recsieve.items_io.read_items`),
:mod:`recsieve.validation` checks items (:func:`~recsieve.validation.check_item`),
:mod:`recsieve.rendering` turns them into text (:func:`~recsieve.rendering.render`,
:func:`~recsieve.rendering.content_hash`). Their public names are re-exported here, so
``from recsieve.catalog import read_items`` keeps working.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.catalog_parquet import (
    PARQUET_FILE,
    ParquetRows,
    read_catalog_parquet,
    write_catalog_parquet,
)
from recsieve.errors import (
    CorruptStoreError,
    DuplicateIdError,
    IncompatibleVersionError,
    InvalidInputError,
    UnknownItemError,
)
from recsieve.items_io import ItemsRead, item_from_record, read_items, scan_items
from recsieve.rendering import DEFAULT_TEMPLATE, Template, content_hash, render
from recsieve.types import Item, Scalar
from recsieve.validation import MAX_ID_CHARS, MAX_TEXT_CHARS, check_item

__all__ = [
    "Catalog",
    # re-exported from their own modules (recsieve.rendering, .validation, .items_io)
    "DEFAULT_TEMPLATE",
    "MAX_TEXT_CHARS",
    "MAX_ID_CHARS",
    "Template",
    "ItemsRead",
    "read_items",
    "scan_items",
    "check_item",
    "item_from_record",
    "render",
    "content_hash",
]

_FORMAT = "recsieve.catalog"
_FORMAT_VERSION = 1
_FILE = "catalog.jsonl"
#: Rows built together when a catalog read from Parquet is first asked about one of them.
_BLOCK = 32


class _Unbuilt:
    """The mark of a live row whose :class:`Item` is still in the file's columns."""

    def __repr__(self) -> str:
        return "<unbuilt>"


_UNBUILT: Any = _Unbuilt()


# -- the catalog --------------------------------------------------------------------------


class Catalog:
    """Items by id, each at a stable int64 row; renders item text under a template.

    Rows count up from 0 in order of first appearance and are never renumbered; removing
    an item leaves a tombstone, and re-adding its id reuses its old row. ``version`` bumps
    on every change. Writers must be serialised by the caller (the engine holds a lock);
    readers may run concurrently with a writer without crashing (plain dicts and lists;
    cached texts are checked against the item they were rendered from).

    A catalog loaded from ``catalog.parquet`` keeps the file's columns and builds each row's
    :class:`Item` the first time it is asked for (a block of rows at a time, under a lock, never
    over a row a writer has touched since), so opening a million-item catalog builds none.
    """

    def __init__(self, template: str | Template = DEFAULT_TEMPLATE) -> None:
        self._template = template if isinstance(template, Template) else Template(template)
        self._row_of: dict[str, int] = {}  # every id ever added -> its row
        self._ids: list[str] = []  # row -> id (permanent)
        self._items: list[Item | None] = []  # row -> live item, None (tombstone) or _UNBUILT
        self._source: ParquetRows | None = None  # where the _UNBUILT rows are
        self._source_rows = 0
        self._building = threading.Lock()
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
        return (it for it in self._all_items() if it is not None)

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
        item = self._item(r) if 0 <= r < len(self._items) else None
        if item is None:
            raise UnknownItemError("row", row)
        return item

    def item_id(self, row: int) -> str:
        """The id of the live item at ``row``."""
        return self._live_item(row).id

    def get(self, item_id: str) -> Item:
        """The live item with ``item_id``."""
        return self._item(self.row(item_id))  # type: ignore[return-value]

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
        item = self._item(int(row))
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
        old = self._item(row) if row is not None else None
        return old is not None and _same_item(old, item)

    # -- rows kept in the file's columns ---------------------------------------------------

    def _item(self, row: int) -> Item | None:
        """The item at ``row`` (``None``: a tombstone), built from the file's columns if need be."""
        item = self._items[row]
        if item is _UNBUILT:
            lo = row - row % _BLOCK
            self._build(lo, min(lo + _BLOCK, self._source_rows))
            item = self._items[row]
        return item

    def _build(self, lo: int, hi: int) -> None:
        """Build the still-unbuilt rows of ``lo..hi-1`` from the file's columns."""
        with self._building:
            source = self._source
            if source is None or all(self._items[r] is not _UNBUILT for r in range(lo, hi)):
                return
            for r, item in enumerate(source.build(lo, hi), lo):
                if self._items[r] is _UNBUILT:
                    self._items[r] = item

    def _all_items(self) -> list[Item | None]:
        """Every row's item (``None``: a tombstone), all built."""
        if self._source is not None:
            for lo in range(0, self._source_rows, 65_536):
                self._build(lo, min(lo + 65_536, self._source_rows))
            with self._building:
                self._source = None  # every row is built: the columns are no longer needed
        return list(self._items)

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
            old = self._item(row)  # built first: a reader's block never lands over this write
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
            self._item(row)  # built first, as in upsert
            self._items[row] = None
            self._texts.pop(row, None)
        self._live -= len(ids)
        if ids:
            self.version += 1
        return np.array(ids, dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------

    def save(self, folder: str | Path, *, format: str = "parquet") -> None:
        """Write the catalog into ``folder`` (tombstones included): ``catalog.parquet``, columns
        read whole on load (:mod:`recsieve.catalog_parquet`), or with ``format="jsonl"``
        ``catalog.jsonl``, a header line then one line per row (the format before Parquet).
        Atomicity is the caller's (``GenerationDir``)."""
        if format not in ("parquet", "jsonl"):
            raise InvalidInputError("format", format, "expected 'parquet' or 'jsonl'")
        header = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "template": self.template,
            "num_rows": self.num_rows,
            "live": self._live,
            "version": self.version,
        }
        if format == "parquet":
            write_catalog_parquet(Path(folder) / PARQUET_FILE, header, list(self._ids), self._all_items())
            return
        lines = [json.dumps(header, ensure_ascii=False)]
        for row, (item_id, item) in enumerate(zip(self._ids, self._all_items(), strict=True)):
            entry = {"row": row, "item": item.to_dict()} if item is not None else {"row": row, "removed": item_id}
            lines.append(json.dumps(entry, ensure_ascii=False, allow_nan=False))
        (Path(folder) / _FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> Catalog:
        """Read a catalog written by :meth:`save` (either format), exactly.

        A missing, truncated or malformed file raises :class:`CorruptStoreError` naming it (and,
        in a JSONL file, the line); another format version raises :class:`IncompatibleVersionError`.
        """
        if (Path(folder) / PARQUET_FILE).is_file():
            return cls._load_parquet(Path(folder) / PARQUET_FILE)
        path = Path(folder) / _FILE
        try:
            lines = path.read_bytes().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(f"{path}: cannot read the catalog: {exc}") from None
        if lines[-1] != "":
            raise CorruptStoreError(f"{path} line {len(lines)}: truncated (no final newline)")
        lines.pop()
        cat, num_rows, live, version = cls._from_header(_load_line(path, lines, 1), f"{path} line 1")
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


    @classmethod
    def _from_header(cls, header: Any, where: str) -> tuple[Catalog, int, int, int]:
        """An empty catalog with the snapshot header's template, and the header's row, live-item and
        version counts; ``where`` names the file (and line) in the errors."""
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise CorruptStoreError(f"{where}: not a recsieve catalog header")
        if header.get("format_version") != _FORMAT_VERSION:
            raise IncompatibleVersionError(
                f"{where}: catalog format version {header.get('format_version')!r}; this recsieve reads {_FORMAT_VERSION}"
            )
        try:
            cat = cls(header["template"])
            num_rows, live, version = (int(header[k]) for k in ("num_rows", "live", "version"))
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise CorruptStoreError(f"{where}: bad header: {exc}") from None
        return cat, num_rows, live, version

    @classmethod
    def _load_parquet(cls, path: Path) -> Catalog:
        header, ids, is_live, source = read_catalog_parquet(path)
        cat, num_rows, live, version = cls._from_header(header, str(path))
        if len(ids) != num_rows:
            raise CorruptStoreError(f"{path}: header says {num_rows} rows, file has {len(ids)} (truncated?)")
        row_of = dict(zip(ids, range(num_rows)))
        if len(row_of) != num_rows or "" in row_of:  # strings, no nulls: read_catalog_parquet checked
            raise CorruptStoreError(f"{path}: item ids are not unique non-empty strings")
        cat._row_of, cat._ids = row_of, ids
        cat._items = [_UNBUILT if x else None for x in is_live.tolist()]
        cat._source, cat._source_rows = source, num_rows
        cat._live = int(is_live.sum())
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
