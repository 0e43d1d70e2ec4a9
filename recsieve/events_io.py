"""Reading event files (JSONL or CSV with ``user_id, item_id, kind, ts[, weight, text]``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsieve.errors import InvalidInputError, RecsieveError
from recsieve.items_io import NOT_UTF8_RE
from recsieve.types import Event

__all__ = ["read_events"]

_FIELDS = ("user_id", "item_id", "kind", "ts", "weight", "text")


def _event(record: dict[str, Any], where: str) -> Event:
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise InvalidInputError(f"{where}: {unknown[0]}", record[unknown[0]], f"unknown column; expected {_FIELDS}")
    rec = {k: v for k, v in record.items() if v is not None and v != ""}
    for key in ("ts", "weight"):
        if isinstance(rec.get(key), str):
            try:
                rec[key] = float(rec[key])
            except ValueError:
                raise InvalidInputError(f"{where}: {key}", rec[key], "must be a number") from None
    for key in ("user_id", "item_id"):
        if key not in rec:
            raise InvalidInputError(f"{where}: {key}", None, "missing")
        if isinstance(rec[key], int) and not isinstance(rec[key], bool):
            rec[key] = str(rec[key])
    try:
        return Event(**rec)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc.field.removeprefix('event.')}", exc.value, exc.reason) from None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any] | InvalidInputError]]:
    """(line number, record or the error that line raises) of each non-blank line.

    Bytes that are not UTF-8 make an error of their own line (so ``skip_invalid`` skips just it).
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                where = f"{path.name} line {lineno}"
                try:
                    line = raw.decode("utf-8").removeprefix("\ufeff") if lineno == 1 else raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield lineno, InvalidInputError(where, raw[exc.start : exc.end], "not UTF-8 text")
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    obj = InvalidInputError(where, line.strip()[:40], f"malformed JSON ({exc.msg})")
                if not isinstance(obj, (dict, InvalidInputError)):
                    obj = InvalidInputError(where, obj, "expected a JSON object")
                yield lineno, obj
    elif suffix == ".csv":
        text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = reader.fieldnames or []
            if any(NOT_UTF8_RE.search(h) for h in header):
                raise InvalidInputError(f"{path.name} line 1: header", header, "not UTF-8 text")
            for row in reader:
                lineno = reader.line_num
                where = f"{path.name} line {lineno}"
                if None in row:
                    yield lineno, InvalidInputError(where, row[None], "more cells than columns")
                elif any(isinstance(v, str) and NOT_UTF8_RE.search(v) for v in row.values()):
                    bad = next(v for v in row.values() if isinstance(v, str) and NOT_UTF8_RE.search(v))
                    yield lineno, InvalidInputError(where, bad.encode("utf-8", "surrogateescape")[:40], "not UTF-8 text")
                else:
                    yield lineno, row
        except csv.Error as exc:  # broken quoting or a huge cell: the rest of the file cannot be trusted
            raise InvalidInputError(f"{path.name} line {reader.line_num}", path.name, f"malformed CSV: {exc}") from None
    else:
        raise InvalidInputError("events", str(path), "unsupported file type; use .jsonl or .csv")


def read_events(path: str | Path, *, skip_invalid: bool = False) -> tuple[list[Event], int]:
    """Read events from a JSONL or CSV file; returns ``(events, skipped)``.

    A bad line raises :class:`InvalidInputError` naming the line and the field, or with
    ``skip_invalid`` is skipped and counted.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError("events", str(path), "is a directory, expected a file")
    if not path.is_file():
        raise InvalidInputError("events", str(path), "no such file")
    events, skipped = [], 0
    for lineno, record in _records(path):
        try:
            if isinstance(record, InvalidInputError):
                raise record
            events.append(_event(record, f"{path.name} line {lineno}"))
        except RecsieveError:
            if not skip_invalid:
                raise
            skipped += 1
    return events, skipped
