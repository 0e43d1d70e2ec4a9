"""The write-ahead journal: every acknowledged event and item change, shared by every process
that opens the engine directory.

Writes reach the journal (committed, synced) *before* they change any in-memory state, so a
crash loses nothing acknowledged: on open, the engine loads its last snapshot and applies the
journal entries after the snapshot's sequence number. Events and item operations share one
sequence, so they are applied in the order they happened.

Many processes (web workers, an ingest job, a trainer) append to one journal. The journal, not
a process, assigns sequence numbers, inside its write transaction; a process keeps the sequence
it has applied and reads the :meth:`~JournalBackend.tail` after it before it answers. A writer
takes the journal's write transaction, applies the tail, checks its write against the state
that now holds, appends and commits: so every process applies every entry in journal order, and
catalog rows (assigned in the order upserts are applied) agree in every process.

:class:`JournalBackend` is that protocol; :class:`SQLiteJournal` implements it for the
processes of one machine (WAL, ``BEGIN IMMEDIATE``, a busy timeout with a clear error past it).
A Redis Streams implementation can serve many machines behind the same protocol.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from recsieve.errors import CorruptStoreError, IncompatibleVersionError, StoreError

__all__ = [
    "JournalBackend",
    "EventColumns",
    "columns_of_tail",
    "SQLiteJournal",
    "Journal",
    "EventRecord",
    "ItemOp",
    "Entry",
    "JournalTruncated",
    "JournalMoved",
    "NETWORK_FILESYSTEMS",
    "network_filesystem",
]

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
#: Version 2: sequence numbers are assigned by the journal inside its write transaction, so many
#: processes may append; ``seq_floor`` is the sequence up to which item operations were dropped.
#: Version 1 (one process) has the same tables and is upgraded on open.
_JOURNAL_VERSION = "2"
_UPGRADES = {"1"}
#: Seconds a writer waits for another process's write transaction before it gives up.
BUSY_TIMEOUT_S = 30.0
#: Sequence numbers read per page of a tail (one short read transaction each).
_PAGE = 4096
_HEAD_SQL = (
    "SELECT max(coalesce((SELECT max(seq) FROM events), 0), coalesce((SELECT max(seq) FROM item_ops), 0), "
    "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key='seq_floor'), 0))"
)
_EVENT_SQL = ("SELECT seq, user_id, item_id, row, kind, ts, weight, text FROM events "
              "WHERE seq > ? AND seq <= ? ORDER BY seq")
#: The columns a replay needs (no item id), and the sequence numbers a page of them spans.
_COLUMN_SQL = "SELECT seq, user_id, row, kind, ts, weight, text FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"
_COLUMN_PAGE = 1 << 20
_FLOOR_SQL = "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key='seq_floor'), 0)"

#: Filesystem types (``/proc/mounts``) on which SQLite's locks and WAL shared memory are unsafe.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs",
                                 "fuse.sshfs", "sshfs"})


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


@dataclass(frozen=True)
class EventColumns:
    """Journaled events as columns (no object per event): ``seq`` and ``rows`` int64, ``ts`` and
    ``weights`` float64 (NaN: no weight given), ``users``, ``kinds`` and ``texts`` (``None``: no
    text) lists, all in journal order."""

    seq: np.ndarray
    users: list[str]
    rows: np.ndarray
    kinds: list[str]
    weights: np.ndarray
    ts: np.ndarray
    texts: list[str | None]

    @classmethod
    def of(cls, records: Sequence[EventRecord]) -> EventColumns:
        """The columns of ``records``."""
        return cls(np.array([e.seq for e in records], dtype=np.int64), [e.user_id for e in records],
                   np.array([e.row for e in records], dtype=np.int64), [e.kind for e in records],
                   np.array([e.weight for e in records], dtype=np.float64),
                   np.array([e.ts for e in records], dtype=np.float64), [e.text for e in records])

    def __len__(self) -> int:
        return int(self.seq.shape[0])


#: One journal entry. Given to :meth:`JournalBackend.append` its ``seq`` is ignored (0 will do).
Entry = EventRecord | ItemOp


class JournalTruncated(StoreError):
    """The tail after ``after`` is incomplete: item operations up to ``floor`` were dropped once a
    snapshot held them. Load the newest snapshot (its sequence is at least ``floor``) and read
    the tail after it."""

    def __init__(self, path: object, after: int, floor: int) -> None:
        self.after = after
        self.floor = floor
        super().__init__(f"journal {path}: entries after {after} were compacted up to {floor}; "
                         "reload from the newest snapshot")


class JournalMoved(StoreError):
    """An append expected the journal to end at ``expected`` but another writer had appended."""

    def __init__(self, path: object, expected: int, head: int) -> None:
        self.expected = expected
        self.head = head
        super().__init__(f"journal {path}: expected to append after {expected}, but it ends at {head}")


class JournalBackend(Protocol):
    """A journal shared by every process of an engine directory.

    Sequence numbers are the journal's: :meth:`append` assigns them atomically, consecutively,
    after every entry appended before. :meth:`tail` returns what follows a sequence in order.
    :meth:`writing` is an exclusive append section: inside it no other writer appends, so a
    writer can apply the tail, check its write against the state that results, and append it
    as the very next entries (``append(..., after=...)`` checks that nothing came between).
    """

    dim: int

    def append(self, entries: Sequence[Entry], *, after: int | None = None) -> int:
        """Durably append ``entries`` (their ``seq`` is ignored); return the last sequence
        assigned (the entries get ``last - len(entries) + 1 .. last``). With ``after``, raise
        :class:`JournalMoved` unless the journal ends at ``after``."""
        ...

    def tail(self, after_seq: int) -> Iterator[Entry]:
        """Entries with ``seq > after_seq``, in order; :class:`JournalTruncated` if some were
        compacted away (``after_seq`` is below :meth:`floor`)."""
        ...

    def head(self) -> int:
        """The last sequence assigned (never goes back, even after compaction)."""
        ...

    def floor(self) -> int:
        """Item operations up to this sequence were compacted away (0: none)."""
        ...

    def version(self) -> int:
        """A cheap token that changes whenever a writer commits (compare it with the one taken
        before the last :meth:`tail`; equal means nothing new)."""
        ...

    def writing(self) -> AbstractContextManager[None]:
        """Exclusive append section: appends inside it commit together when it ends."""
        ...

    def events(self, user_id: str | None = None, *, upto: int | None = None) -> list[EventRecord]:
        """Journaled events (of one user; up to sequence ``upto``), in order."""
        ...

    def event_columns(self, after_seq: int, upto_seq: int, *, page: int = ...) -> Iterator[EventColumns]:
        """Events with ``after_seq < seq <= upto_seq`` as columns, in order, up to ``page``
        sequence numbers per batch (one query each)."""
        ...

    def tail_columns(self, after_seq: int) -> Iterator[EventColumns | ItemOp]:
        """:meth:`tail` with each run of consecutive events as one :class:`EventColumns` (no
        object per event: what a replay of millions of events reads)."""
        ...

    def truncate_item_ops(self, upto_seq: int) -> None:
        """Compact: drop item operations up to ``upto_seq`` (a snapshot holds them); events stay."""
        ...

    def close(self) -> None: ...


def _unescape_mount(field: str) -> str:
    r"""``/proc/mounts`` writes space, tab, newline and backslash as ``\040`` etc."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def network_filesystem(path: str | os.PathLike, mounts: str | os.PathLike = "/proc/mounts") -> str | None:
    """The filesystem type of ``path``'s mount point if it is a network filesystem where SQLite's
    locking is unsafe (:data:`NETWORK_FILESYSTEMS`), else ``None`` (also where ``mounts`` is
    unreadable, e.g. not Linux)."""
    try:
        text = Path(mounts).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = _unescape_mount(parts[1])
        prefix = point.rstrip("/") + "/"
        if (real == point or real.startswith(prefix)) and len(point) >= len(best):
            best, fstype = point, parts[2]  # the longest mount point holding path; later mounts win
    return fstype if fstype in NETWORK_FILESYSTEMS else None


class SQLiteJournal:
    """The journal in one SQLite file (WAL, ``synchronous=FULL``), for the processes of one machine.

    Writers serialise on SQLite's write lock (``BEGIN IMMEDIATE``), waiting up to
    ``busy_timeout_s`` for another process's transaction; readers never wait (WAL). Three
    connections, each used by one thread at a time: one for this object's writes and tails
    (under ``_lock``), one for the short reads of the request path (:meth:`version`,
    :meth:`head`, :meth:`floor`), one for history (:meth:`events`). A statement of another thread
    on the writing connection would pin an old read snapshot there, and SQLite then refuses that
    connection's next write at once ("database is locked"); no read ever sees a write half done.
    """

    def __init__(self, path: str | Path, dim: int, *, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 mounts: str | os.PathLike = "/proc/mounts") -> None:
        self.path = Path(path)
        self.dim = dim
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()  # this connection's write transaction and tails
        self._read_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._in_write = False
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._probe: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise StoreError(f"journal: {self.path} is a directory, expected a SQLite file")
        fstype = network_filesystem(self.path.parent, mounts)
        if fstype is not None:
            raise StoreError(
                f"journal {self.path}: the directory is on a {fstype} network filesystem, where SQLite's "
                "locks and shared memory are unsafe for a journal shared by several processes; keep the "
                "engine directory on a local disk"
            )
        try:
            self._db = self._connect()
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            if str(mode).lower() != "wal":
                raise StoreError(f"journal {self.path}: SQLite refused WAL mode here (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            found = self._stored_version()
            if found not in (None, _JOURNAL_VERSION, *_UPGRADES):
                raise IncompatibleVersionError(
                    f"journal {self.path}: version {found!r}; this recsieve reads version {_JOURNAL_VERSION}"
                )
            if found != _JOURNAL_VERSION:  # a new journal, or an upgrade: one writer does it
                with self.writing():
                    for statement in _SCHEMA.split(";"):  # not executescript: it would commit first
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (_JOURNAL_VERSION,))
            self._reader = self._connect()
            self._probe = self._connect()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CorruptStoreError(f"journal {self.path}: not a readable SQLite database ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _stored_version(self) -> str | None:
        try:
            rows = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return rows[0][0] if rows else None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None)

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The write transaction (``BEGIN IMMEDIATE``): appends inside it commit together at the
        end, or none does. Re-entrant; other threads of this process wait for it."""
        with self._lock:
            if self._in_write:
                yield
                return
            self._execute_write("BEGIN IMMEDIATE")
            self._in_write = True
            try:
                yield
            except BaseException:
                self._in_write = False
                self._db.execute("ROLLBACK")
                raise
            self._in_write = False
            try:
                self._execute_write("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _execute_write(self, sql: str, rows: list[tuple] | None = None) -> None:
        started = time.monotonic()
        try:
            if rows is None:
                self._db.execute(sql)
            else:
                self._db.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - started
            if "locked" in str(exc) and waited >= 0.9 * self.busy_timeout_s:  # the busy handler gave up
                raise StoreError(
                    f"journal {self.path}: busy: another process held the journal's write lock for more than "
                    f"{self.busy_timeout_s:g} s (SQLite busy timeout); nothing was written"
                ) from None
            raise StoreError(f"journal {self.path}: write failed after {waited:.3f} s ({exc}); "
                             "nothing was written") from None
        except sqlite3.Error as exc:
            raise StoreError(f"journal {self.path}: write failed ({exc})") from None

    def append(self, entries: Sequence[Entry], *, after: int | None = None) -> int:
        """Durably append ``entries`` as the next sequence numbers (see :class:`JournalBackend`)."""
        with self.writing():
            head = self._head(self._db)
            if after is not None and head != after:
                raise JournalMoved(self.path, after, head)
            events, ops = [], []
            for seq, e in enumerate(entries, start=head + 1):
                if isinstance(e, EventRecord):
                    events.append((seq, e.user_id, e.item_id, e.row, e.kind, e.ts, e.weight, e.text))
                else:
                    blob = None if e.vectors is None else np.ascontiguousarray(e.vectors, dtype="<f4").tobytes()
                    ops.append((seq, e.op, json.dumps(e.payload), blob))
            if events:
                self._execute_write("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", events)
            if ops:
                self._execute_write("INSERT INTO item_ops VALUES (?, ?, ?, ?)", ops)
            return head + len(entries)

    def append_events(self, events: Sequence[tuple[str, str, int, str, float, float | None, str | None]]) -> int:
        """Durably append events ``(user_id, item_id, row, kind, ts, weight, text)``; return the last seq."""
        return self.append([EventRecord(0, *e) for e in events])

    def append_item_op(self, op: str, payload: list, vectors: np.ndarray | None = None) -> int:
        """Durably append an item operation; return its seq."""
        return self.append([ItemOp(0, op, payload, vectors)])

    def truncate_item_ops(self, upto_seq: int) -> None:
        """Drop item operations up to ``upto_seq`` (a snapshot holds them; events are kept: they
        are history) and raise the floor to it, so a process behind it reloads a snapshot and
        sequence numbers never go back."""
        with self.writing():
            if upto_seq > self._floor(self._db):
                self._execute_write("INSERT OR REPLACE INTO meta VALUES ('seq_floor', ?)", [(str(upto_seq),)])
                self._execute_write("DELETE FROM item_ops WHERE seq <= ?", [(upto_seq,)])

    # -- reading ---------------------------------------------------------------------------

    def version(self) -> int:
        """SQLite's ``PRAGMA data_version`` of a connection that never writes: it changes whenever
        any other connection commits, this object's writes included. One cheap statement."""
        return int(self._short("PRAGMA data_version"))

    def _short(self, sql: str) -> int:
        with self._probe_lock:
            try:
                return self._probe.execute(sql).fetchall()[0][0]
            except sqlite3.DatabaseError as exc:
                raise CorruptStoreError(f"journal {self.path}: unreadable ({exc})") from None
            except sqlite3.Error as exc:
                raise StoreError(f"journal {self.path}: unreadable ({exc})") from None

    def tail(self, after_seq: int) -> Iterator[Entry]:
        """Entries with ``seq > after_seq``, events and item operations interleaved in order,
        read a page at a time (each page one read transaction that also checks the floor)."""
        for events, ops in self._pages(after_seq, _PAGE, _EVENT_SQL):
            yield from self._merge([EventRecord(*r) for r in events], ops)

    def tail_columns(self, after_seq: int) -> Iterator[EventColumns | ItemOp]:
        """:meth:`tail` with each run of consecutive events as one :class:`EventColumns`, read
        ``_COLUMN_PAGE`` sequence numbers at a time."""
        for events, ops in self._pages(after_seq, _COLUMN_PAGE, _COLUMN_SQL):
            if not events:
                yield from self._merge([], ops)
                continue
            cols, lo = self._columns(events), 0
            for op in self._merge([], ops):  # the events before each operation, then it
                hi = int(np.searchsorted(cols.seq, op.seq))
                if hi > lo:
                    yield _slice(cols, lo, hi)
                yield op
                lo = hi
            if lo < len(cols):
                yield cols if lo == 0 else _slice(cols, lo, len(cols))

    def _pages(self, after_seq: int, page: int, event_sql: str) -> Iterator[tuple[list[tuple], list[tuple]]]:
        """(event rows, item-operation rows) of the entries after ``after_seq``, ``page`` sequence
        numbers at a time, each page read in one transaction that checks the floor first."""
        pos = after_seq
        while True:
            with self._lock:
                own = not self._in_write
                try:
                    if own:
                        self._db.execute("BEGIN")
                    floor = self._floor(self._db)
                    if pos < floor:
                        raise JournalTruncated(self.path, pos, floor)
                    head = self._head(self._db)
                    if pos >= head:
                        return
                    end = min(pos + page, head)
                    events = self._db.execute(event_sql, (pos, end)).fetchall()
                    ops = self._db.execute(
                        "SELECT seq, op, payload, vectors FROM item_ops WHERE seq > ? AND seq <= ? ORDER BY seq",
                        (pos, end)).fetchall()
                except sqlite3.DatabaseError as exc:
                    raise CorruptStoreError(f"journal {self.path}: unreadable entry ({exc})") from None
                finally:
                    if own and self._db.in_transaction:
                        self._db.execute("COMMIT")
            yield events, ops
            pos = end

    def replay(self, after_seq: int = 0) -> Iterator[Entry]:
        """Same as :meth:`tail`."""
        return self.tail(after_seq)

    def _merge(self, events: list[EventRecord], ops: list[tuple]) -> Iterator[Entry]:
        decoded: list[Entry] = list(events)
        for seq, op, payload, blob in ops:
            try:
                vecs = None
                if blob is not None:
                    vecs = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(-1, self.dim)
                decoded.append(ItemOp(seq, op, json.loads(payload), vecs))
            except ValueError as exc:
                raise CorruptStoreError(f"journal {self.path}: unreadable entry {seq} ({exc})") from None
        if events and ops:
            decoded.sort(key=lambda e: e.seq)
        return iter(decoded)

    @staticmethod
    def _head(db: sqlite3.Connection) -> int:
        return int(db.execute(_HEAD_SQL).fetchall()[0][0])

    @staticmethod
    def _floor(db: sqlite3.Connection) -> int:
        return int(db.execute(_FLOOR_SQL).fetchall()[0][0])

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise CorruptStoreError(f"journal {self.path}: unreadable ({exc})") from None

    def head(self) -> int:
        """The last sequence assigned by any process (it never goes back)."""
        return int(self._short(_HEAD_SQL))

    def floor(self) -> int:
        """Item operations up to this sequence were compacted away after a snapshot."""
        return int(self._short(_FLOOR_SQL))

    @property
    def last_seq(self) -> int:
        """Sequence number of the last entry written by any process (:meth:`head`)."""
        return self.head()

    def events(self, user_id: str | None = None, *, upto: int | None = None) -> list[EventRecord]:
        """All journaled events (of one user; up to sequence ``upto``), in order."""
        sql = "SELECT seq, user_id, item_id, row, kind, ts, weight, text FROM events WHERE seq <= ?"
        args: tuple = (upto if upto is not None else 2**62,)
        if user_id is not None:
            sql += " AND user_id = ?"
            args += (user_id,)
        return [EventRecord(*r) for r in self._read(sql + " ORDER BY seq", args)]

    def event_columns(self, after_seq: int, upto_seq: int, *, page: int = 1 << 20) -> Iterator[EventColumns]:
        """Events with ``after_seq < seq <= upto_seq`` as :class:`EventColumns`, in order: one
        query per ``page`` sequence numbers (bounded memory for long logs)."""
        pos = after_seq
        while pos < upto_seq:
            end = min(pos + page, upto_seq)
            got = self._read(_COLUMN_SQL, (pos, end))
            if got:
                yield self._columns(got)
            pos = end

    def _columns(self, got: list[tuple]) -> EventColumns:
        """Rows of :data:`_COLUMN_SQL` as columns."""
        seq, users, rows, kinds, ts, weights, texts = zip(*got)
        try:
            return EventColumns(np.array(seq, dtype=np.int64), list(users), np.array(rows, dtype=np.int64), list(kinds),
                                np.array(weights, dtype=np.float64), np.array(ts, dtype=np.float64), list(texts))
        except (TypeError, ValueError) as exc:
            raise CorruptStoreError(f"journal {self.path}: unreadable events after {seq[0] - 1} ({exc})") from None

    def event_rows(self) -> tuple[list[str], np.ndarray]:
        """(user ids, rows) of every event, in order — cheap input for statistics."""
        users, rows = [], []
        for u, r in self._read("SELECT user_id, row FROM events ORDER BY seq"):
            users.append(u)
            rows.append(r)
        return users, np.asarray(rows, dtype=np.int64)

    def close(self) -> None:
        with self._lock:
            for db in (self._db, self._reader, self._probe):
                if db is not None:
                    db.close()


def _slice(cols: EventColumns, lo: int, hi: int) -> EventColumns:
    return EventColumns(cols.seq[lo:hi], cols.users[lo:hi], cols.rows[lo:hi], cols.kinds[lo:hi],
                        cols.weights[lo:hi], cols.ts[lo:hi], cols.texts[lo:hi])


def columns_of_tail(entries: Iterator[Entry], page: int = 1 << 16) -> Iterator[EventColumns | ItemOp]:
    """``entries`` (a tail) with each run of consecutive events, up to ``page`` of them, as one
    :class:`EventColumns`: :meth:`JournalBackend.tail_columns` for a journal that reads records."""
    run: list[EventRecord] = []
    for entry in entries:
        if isinstance(entry, EventRecord):
            run.append(entry)
            if len(run) == page:
                yield EventColumns.of(run)
                run = []
            continue
        if run:
            yield EventColumns.of(run)
            run = []
        yield entry
    if run:
        yield EventColumns.of(run)


#: The journal engines open today (one machine's processes).
Journal = SQLiteJournal
