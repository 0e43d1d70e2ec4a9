"""Reading event files (JSONL or CSV with ``user_id, item_id, kind, ts[, weight, text]``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsieve.errors import InvalidInputError, RecsieveError
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
    """(line number, record or the error that line raises) of each non-blank line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8", errors="strict") as fh:
            try:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        obj = InvalidInputError(f"{path.name} line {lineno}", line.strip()[:40], f"malformed JSON ({exc.msg})")
                    if not isinstance(obj, (dict, InvalidInputError)):
                        obj = InvalidInputError(f"{path.name} line {lineno}", obj, "expected a JSON object")
                    yield lineno, obj
            except UnicodeDecodeError as exc:
                raise InvalidInputError(path.name, exc.object[exc.start : exc.end], "not UTF-8 text") from None
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            try:
                reader = csv.DictReader(fh)
                for lineno, row in enumerate(reader, start=2):
                    if None in row:
                        yield lineno, InvalidInputError(f"{path.name} line {lineno}", row[None], "more cells than columns")
                    else:
                        yield lineno, row
            except UnicodeDecodeError as exc:
                raise InvalidInputError(path.name, exc.object[exc.start : exc.end], "not UTF-8 text") from None
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
