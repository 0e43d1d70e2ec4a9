"""What a :class:`~recsieve.indexes.lance_index.LanceIndex` writes into its LanceDB table, the SQL
it filters with (:func:`filter_sql`), and the working copies its compactions build on.

:func:`write_rows`, :func:`add_fields` and :func:`delete_ids` are the index's three writes (a
``merge_insert`` on ``id``, new all-null metadata columns, ``delete``); :func:`replay` applies the
writes recorded during a compaction to the copy being built, coalesced into one delete and one
``merge_insert``. :func:`link_copy` makes the copy: a new folder holding the dataset's files as
hard links (a plain copy where the file system cannot link), taken while no writer runs, so it is
the table at that version. Lance never changes a file it has written (a commit writes new data,
deletion, index and manifest files; cleanup unlinks), so the two folders share unchanged bytes and
then diverge by writing new files each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsieve.indexes.checks import literal_kind
from recsieve.indexes.rebuild import LogEntry

__all__ = ["ARROW_TYPES", "KIND_OF", "CHUNK", "ids_sql", "filter_sql", "kinds_of", "write_rows", "add_fields",
           "delete_ids", "replay", "link_copy"]

#: Arrow type of each metadata kind, and back.
ARROW_TYPES = {"number": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
KIND_OF = {pa.float64(): "number", pa.bool_(): "bool", pa.string(): "string"}
#: Ids per ``IN (...)`` list.
CHUNK = 4096
_NULL = "CAST(NULL AS BOOLEAN)"  # SQL "unknown"


def ids_sql(ids: Sequence[int] | np.ndarray) -> str:
    """``ids`` as the inside of a SQL ``IN (...)`` list."""
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


def kinds_of(schema: pa.Schema) -> dict[str, str]:
    """The metadata columns of a table's ``schema``: name -> kind, in column order."""
    return {f.name: KIND_OF[f.type] for f in schema if f.name not in ("id", "vector")}


def write_rows(table: Any, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
               kinds: Mapping[str, str]) -> None:
    """Insert or replace ``ids`` (unique) with ``vectors`` and the metadata ``rows`` (a field a row
    lacks is null) in ``table``, whose metadata columns are ``kinds``."""
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1]),
    }
    for name, kind in kinds.items():
        columns[name] = pa.array([row.get(name) for row in rows], ARROW_TYPES[kind])
    batch = pa.table(columns, schema=table.schema)
    table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(batch)


def add_fields(table: Any, fields: Mapping[str, str]) -> None:
    """Add the metadata columns ``fields`` (name -> kind), null in every row, to ``table``."""
    table.add_columns([pa.field(name, ARROW_TYPES[kind]) for name, kind in fields.items()])


def delete_ids(table: Any, ids: np.ndarray) -> int:
    """Delete the rows of ``ids`` (unique) from ``table``; return how many there were."""
    removed = 0
    for start in range(0, len(ids), CHUNK):
        where = f"id IN ({ids_sql(ids[start : start + CHUNK])})"
        hits = table.count_rows(where)
        if hits:
            table.delete(where)
            removed += hits
    return removed


def replay(table: Any, entries: Sequence[LogEntry]) -> int:
    """Apply the recorded writes ``entries`` to ``table`` as one delete and one ``merge_insert``,
    with the same outcome as applying them in order: an id's last write wins (its row as that
    write gave it), and columns are added in the order the writes added them. Returns the rows
    written (they are not in the table's ANN index)."""
    fields: dict[str, str] = {}
    upserts: dict[int, tuple[np.ndarray, Mapping[str, Any]]] = {}
    deletes: set[int] = set()
    for entry in entries:
        fields.update(entry.new_fields or {})
        if entry.vectors is None:
            for i in entry.ids.tolist():
                upserts.pop(i, None)
                deletes.add(i)
        else:
            for i, vector, row in zip(entry.ids.tolist(), entry.vectors, entry.rows or (), strict=True):
                deletes.discard(i)
                upserts[i] = (vector, row)
    missing = {name: kind for name, kind in fields.items() if name not in table.schema.names}
    if missing:
        add_fields(table, missing)
    if deletes:
        delete_ids(table, np.array(sorted(deletes), dtype=np.int64))
    if upserts:
        write_rows(table, np.fromiter(upserts, dtype=np.int64, count=len(upserts)),
                   np.stack([v for v, _ in upserts.values()]), [r for _, r in upserts.values()],
                   kinds_of(table.schema))
    return len(upserts)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def link_copy(dataset: Path, name: str) -> Path:
    """A new folder beside the database folder of ``dataset`` holding a copy of it as the
    dataset ``name`` (hard links where possible). The caller keeps writers out meanwhile."""
    root = Path(tempfile.mkdtemp(prefix="recsieve-lance-", dir=dataset.parent.parent))
    try:
        shutil.copytree(dataset, root / name, copy_function=_link_or_copy)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root
