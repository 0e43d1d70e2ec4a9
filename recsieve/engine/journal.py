"""The write-ahead journal: every acknowledged event and item change, in SQLite (WAL mode).

Writes reach the journal (committed, synced) *before* they change any in-memory state, so
a crash loses nothing acknowledged: on open, the engine loads its last snapshot and replays
the journal entries after the snapshot's sequence number. Events and item operations share
one sequence, so replay interleaves them in the order they happened.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsieve.errors import CorruptStoreError, StoreError

__all__ = ["Journal", "EventRecord", "ItemOp"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    weight REAL,
    text TEXT
);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, seq);
CREATE TABLE IF NOT EXISTS item_ops (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'remove')),
    payload TEXT NOT NULL,
    vectors BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_JOURNAL_VERSION = "1"


@dataclass(frozen=True)
class EventRecord:
    """An event as journaled: with its sequence number and the item's catalog row."""

    seq: int
    user_id: str
    item_id: str
    row: int
    kind: str
    ts: float
    weight: float | None
    text: str | None


@dataclass(frozen=True)
class ItemOp:
    """An item operation as journaled: ``upsert`` (items as dicts + their vectors) or ``remove`` (ids)."""

    seq: int
    op: str
    payload: list
    vectors: np.ndarray | None


class Journal:
    """Append-only SQLite journal of events and item operations (one writer, many readers)."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise StoreError(f"journal: {self.path} is a directory, expected a SQLite file")
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('version', ?)", (_JOURNAL_VERSION,))
            elif row[0] != _JOURNAL_VERSION:
                raise CorruptStoreError(f"journal {self.path}: version {row[0]!r}, expected {_JOURNAL_VERSION}")
            self._seq = self._db.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM events), 0), "
                "coalesce((SELECT max(seq) FROM item_ops), 0), "
                "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key='seq_floor'), 0))"
            ).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise CorruptStoreError(f"journal {self.path}: not a readable SQLite database ({exc})") from None

    @property
    def last_seq(self) -> int:
        """Sequence number of the last entry written."""
        return self._seq

    def append_events(self, events: Sequence[tuple[str, str, int, str, float, float | None, str | None]]) -> int:
        """Durably append events ``(user_id, item_id, row, kind, ts, weight, text)``; return the last seq."""
        with self._lock:
            start = self._seq
            rows = [(start + i + 1, *e) for i, e in enumerate(events)]
            self._write("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._seq = start + len(rows)
            return self._seq

    def append_item_op(self, op: str, payload: list, vectors: np.ndarray | None = None) -> int:
        """Durably append an item operation; return its seq."""
        blob = None if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        with self._lock:
            seq = self._seq + 1
            self._write("INSERT INTO item_ops VALUES (?, ?, ?, ?)", [(seq, op, json.dumps(payload), blob)])
            self._seq = seq
            return seq

    def _write(self, sql: str, rows: list[tuple]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"journal {self.path}: write failed ({exc})") from None

    def replay(self, after_seq: int = 0) -> Iterator[EventRecord | ItemOp]:
        """Entries with ``seq > after_seq``, events and item operations interleaved in order."""
        cur = self._db.cursor()
        query = (
            "SELECT seq, 'event', user_id, item_id, row, kind, ts, weight, text, NULL, NULL FROM events WHERE seq > ? "
            "UNION ALL SELECT seq, op, NULL, NULL, NULL, NULL, NULL, NULL, NULL, payload, vectors "
            "FROM item_ops WHERE seq > ? ORDER BY seq"
        )
        try:
            for r in cur.execute(query, (after_seq, after_seq)):
                if r[1] == "event":
                    yield EventRecord(r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8])
                else:
                    payload = json.loads(r[9])
                    vecs = None
                    if r[10] is not None:
                        vecs = np.frombuffer(r[10], dtype="<f4").astype(np.float32).reshape(-1, self.dim)
                    yield ItemOp(r[0], r[1], payload, vecs)
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise CorruptStoreError(f"journal {self.path}: unreadable entry ({exc})") from None

    def events(self, user_id: str | None = None) -> list[EventRecord]:
        """All journaled events (of one user), in order."""
        sql = "SELECT seq, user_id, item_id, row, kind, ts, weight, text FROM events"
        args: tuple = ()
        if user_id is not None:
            sql += " WHERE user_id = ?"
            args = (user_id,)
        return [EventRecord(*r) for r in self._db.execute(sql + " ORDER BY seq", args)]

    def event_rows(self) -> tuple[list[str], np.ndarray]:
        """(user ids, rows) of every event, in order — cheap input for statistics."""
        users, rows = [], []
        for u, r in self._db.execute("SELECT user_id, row FROM events ORDER BY seq"):
            users.append(u)
            rows.append(r)
        return users, np.asarray(rows, dtype=np.int64)

    def truncate_item_ops(self, upto_seq: int) -> None:
        """Drop item operations already captured by a snapshot (events are kept: they are history)."""
        with self._lock:
            # Remember the high-water mark, so sequence numbers never go back after truncation.
            self._write("INSERT OR REPLACE INTO meta VALUES ('seq_floor', ?)", [(str(self._seq),)])
            self._write("DELETE FROM item_ops WHERE seq <= ?", [(upto_seq,)])

    def close(self) -> None:
        with self._lock:
            self._db.close()
