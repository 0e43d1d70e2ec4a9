"""The journal on Redis Streams: the :class:`~recsieve.engine.journal.JournalBackend` protocol for
processes on many machines (serving replicas under Ray Serve, ingest jobs, a trainer).

Configured by ``journal = "redis://HOST:PORT/DB?stream=NAME"`` in the engine's ``[journal]``
table. Everything lives under keys tagged ``{NAME}`` (one hash slot, so a Redis Cluster keeps
them on one node):

- ``{NAME}:log``: the stream. An entry's stream id is ``SEQ-0``: the sequence number *is* the
  id's first part, so a tail is ``XRANGE {NAME}:log (SEQ-0 +``. An event is one field ``e``
  (JSON ``[user, item, row, kind, ts, weight, text]``); an item operation a field ``o`` (JSON
  ``[op, payload]``) and, for an upsert, ``v`` (the vectors, little-endian float32).
- ``{NAME}:head``: the last sequence assigned; ``{NAME}:floor``: item operations up to it were
  compacted away; ``{NAME}:version``: bumped by every commit (the cheap "anything new?" token);
  ``{NAME}:ops``: the sequences of item operations (what compaction deletes); ``{NAME}:u:USER``:
  the user's events (``"SEQ JSON"``), for history; ``{NAME}:meta``: dimension and format.

Sequences: one Lua script appends a batch (scripts run atomically in Redis): it checks where the
journal ends, numbers the entries ``head+1 ..``, ``XADD``s them with those ids, files events under
their user and item operations in ``ops``, sets ``head`` and bumps ``version``. Nothing can come
between the numbering and the write, and a batch is written whole.

Check-then-write (:meth:`RedisJournal.writing`): a lock key (``SET NX PX``, a random token,
released only by its holder), waited for up to ``busy_timeout_s`` with a clear error past it.
Appends inside are buffered and written by one script call when the section ends, which also
checks that the journal still ends where it ended when the lock was taken: should the lock have
expired (a holder paused past ``lock_ttl_s``) and another writer appended, nothing is written and
:class:`~recsieve.errors.StoreError` says so. So a section commits whole or not at all, as
SQLite's transaction does.

Durability: acknowledged means durable only when Redis syncs its append-only file before it
answers: ``appendonly yes`` and ``appendfsync always``. On connect the journal reads the server's
``CONFIG`` and refuses a server set otherwise (``require_fsync=false`` in the URL accepts the risk:
with ``everysec`` a crash of the Redis host can lose up to a second of acknowledged writes, and a
failover to a replica what it had not received). A Lua script that fails half-way is not rolled
back by Redis; the script's inputs are checked before it runs, so only a server fault could.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np

from recsieve.engine.journal import (
    BUSY_TIMEOUT_S,
    Entry,
    EventColumns,
    EventRecord,
    ItemOp,
    JournalMoved,
    JournalTruncated,
    columns_of_tail,
)
from recsieve.errors import (
    CorruptStoreError,
    IncompatibleVersionError,
    InvalidInputError,
    MissingDependencyError,
    StoreError,
)

__all__ = ["RedisJournal", "LOCK_TTL_S", "parse_journal_url"]

log = logging.getLogger("recsieve")

#: Seconds the write lock lives if its holder dies without releasing it.
LOCK_TTL_S = 10.0
_FORMAT = "1"
_PAGE = 4096

# KEYS: log, head, ops, version, then one user key per event. ARGV: after (-1: any), then per entry
# 'e' JSON | 'o' JSON | 'v' JSON VECTORS. Returns {0, head} or {-1, head} when head != after.
_APPEND = """
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = tonumber(ARGV[1])
if after >= 0 and head ~= after then return {-1, head} end
local i, user = 2, 5
while i <= #ARGV do
  local kind = ARGV[i]
  head = head + 1
  local id = head .. '-0'
  if kind == 'e' then
    redis.call('XADD', KEYS[1], id, 'e', ARGV[i + 1])
    redis.call('RPUSH', KEYS[user], head .. ' ' .. ARGV[i + 1])
    user = user + 1
    i = i + 2
  elseif kind == 'o' then
    redis.call('XADD', KEYS[1], id, 'o', ARGV[i + 1])
    redis.call('RPUSH', KEYS[3], head)
    i = i + 2
  else
    redis.call('XADD', KEYS[1], id, 'o', ARGV[i + 1], 'v', ARGV[i + 2])
    redis.call('RPUSH', KEYS[3], head)
    i = i + 3
  end
end
redis.call('SET', KEYS[2], head)
redis.call('INCR', KEYS[4])
return {0, head}
"""

# KEYS: log, floor, ops, version. ARGV: upto.
_TRUNCATE = """
local upto = tonumber(ARGV[1])
if upto <= tonumber(redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('SET', KEYS[2], upto)
while true do
  local s = redis.call('LINDEX', KEYS[3], 0)
  if not s or tonumber(s) > upto then break end
  redis.call('XDEL', KEYS[1], s .. '-0')
  redis.call('LPOP', KEYS[3])
end
redis.call('INCR', KEYS[4])
return 1
"""

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def parse_journal_url(url: str) -> tuple[str, str, bool]:
    """``redis://HOST:PORT/DB?stream=NAME[&require_fsync=false]`` -> (the Redis URL without the
    journal's own parameters, the stream name, whether durable fsync is required)."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise InvalidInputError("journal", url, "expected redis://HOST:PORT/DB?stream=NAME (or rediss://, unix://)")
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    stream = query.pop("stream", ["recsieve"])[-1]
    if not stream or any(c in stream for c in "{}: "):
        raise InvalidInputError("journal", url, f"stream={stream!r}: a name without braces, colons or spaces")
    fsync = query.pop("require_fsync", ["true"])[-1].lower()
    if fsync not in ("true", "false"):
        raise InvalidInputError("journal", url, f"require_fsync={fsync!r}: expected true or false")
    rest = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    return rest, stream, fsync == "true"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


class RedisJournal:
    """The journal as a Redis stream (see the module docstring); thread-safe.

    ``url``: ``redis://HOST:PORT/DB?stream=NAME``. ``client``: a ``redis.Redis`` to use instead
    of connecting (its server is still checked). ``lock_ttl_s``: how long the write lock outlives
    a holder that died. Raises :class:`StoreError` when Redis cannot be reached, is not set up for
    durable writes (``require_fsync``), or holds a journal of another dimension.
    """

    def __init__(self, url: str, dim: int, *, busy_timeout_s: float = BUSY_TIMEOUT_S, lock_ttl_s: float = LOCK_TTL_S,
                 client: Any = None) -> None:
        try:
            import redis
        except ImportError:
            raise MissingDependencyError("a Redis journal needs redis-py: pip install 'recsieve[redis]'") from None
        self._redis_errors = (redis.RedisError,)
        server_url, self.stream, require_fsync = parse_journal_url(url)
        self.path = _redacted(url)  # named in errors, as SQLiteJournal names its file
        self.dim = dim
        self.busy_timeout_s = busy_timeout_s
        self.lock_ttl_s = lock_ttl_s
        tag = "{" + self.stream + "}"
        self._log, self._head_key, self._floor_key = f"{tag}:log", f"{tag}:head", f"{tag}:floor"
        self._version_key, self._ops, self._lock_key = f"{tag}:version", f"{tag}:ops", f"{tag}:lock"
        self._meta, self._user_prefix = f"{tag}:meta", f"{tag}:u:"
        self._lock = threading.RLock()
        self._token: str | None = None  # set while this object holds the write lock
        self._base = 0  # where the journal ended when the lock was taken
        self._buffer: list[Entry] = []
        with self._errors("connect"):
            self._db = client if client is not None else redis.Redis.from_url(server_url)
            self._check_durability(require_fsync)
            self._db.hsetnx(self._meta, "format", _FORMAT)
            self._db.hsetnx(self._meta, "dim", str(dim))
            meta = {k.decode(): v.decode() for k, v in self._db.hgetall(self._meta).items()}
            self._append_script = self._db.register_script(_APPEND)
            self._truncate_script = self._db.register_script(_TRUNCATE)
            self._release_script = self._db.register_script(_RELEASE)
        if meta.get("format") != _FORMAT:
            raise IncompatibleVersionError(f"journal {self.path}: format {meta.get('format')!r}; this recsieve "
                                           f"reads format {_FORMAT}")
        if meta.get("dim") != str(dim):
            raise StoreError(f"journal {self.path}: stream {self.stream!r} holds vectors of dimension "
                             f"{meta.get('dim')}, this engine {dim}; name another stream")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._redis_errors as exc:
            raise StoreError(f"journal {self.path}: {what} failed ({type(exc).__name__}: {exc})") from None

    def _check_durability(self, required: bool) -> None:
        try:
            conf = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                    for name in ("appendonly", "appendfsync") for k, v in self._db.config_get(name).items()}
        except self._redis_errors as exc:
            if "CONFIG" not in str(exc).upper() and "unknown command" not in str(exc).lower():
                raise
            conf = {}
        if conf.get("appendonly") == "yes" and conf.get("appendfsync") == "always":
            return
        found = (f"appendonly={conf.get('appendonly')} appendfsync={conf.get('appendfsync')}" if conf
                 else "its CONFIG command is disabled, so durability cannot be checked")
        message = (f"journal {self.path}: Redis is not set up for durable acknowledgements ({found}); an acknowledged "
                   "write could be lost in a crash. Set `appendonly yes` and `appendfsync always` in redis.conf (or "
                   "CONFIG SET), or add require_fsync=false to the journal URL to accept that risk")
        if required:
            raise StoreError(message)
        log.warning("recsieve: %s", message)

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive append section: the Redis lock (waited for up to ``busy_timeout_s``, then a
        clear error); appends inside are written together, by one script, when it ends."""
        with self._lock:
            if self._token is not None:
                yield
                return
            token = self._acquire()
            try:
                with self._errors("reading the head"):
                    self._base = self._head()
                self._buffer = []
                yield
                if self._buffer:
                    self._flush(self._buffer, after=self._base)
            finally:
                self._buffer = []
                self._token = None
                try:
                    self._release_script(keys=[self._lock_key], args=[token])
                except self._redis_errors:
                    log.warning("recsieve: journal %s: could not release the write lock; it expires in %g s",
                                self.path, self.lock_ttl_s)

    def _acquire(self) -> str:
        token = secrets.token_hex(16)
        started = time.monotonic()
        pause = 0.002
        while True:
            with self._errors("taking the write lock"):
                if self._db.set(self._lock_key, token, nx=True, px=max(1, int(self.lock_ttl_s * 1000))):
                    self._token = token
                    return token
            if time.monotonic() - started >= self.busy_timeout_s:
                raise StoreError(
                    f"journal {self.path}: busy: another process held the journal's write lock for more than "
                    f"{self.busy_timeout_s:g} s; nothing was written"
                )
            time.sleep(pause)
            pause = min(0.05, pause * 2)

    def append(self, entries: Sequence[Entry], *, after: int | None = None) -> int:
        """Durably append ``entries`` as the next sequence numbers (see the protocol); inside
        :meth:`writing` they are written when the section ends."""
        with self.writing():
            head = self._base + len(self._buffer)
            if after is not None and head != after:
                raise JournalMoved(self.path, after, head)
            for e in entries:
                self._check_entry(e)
            self._buffer.extend(entries)
            return head + len(entries)

    def _check_entry(self, e: Entry) -> None:
        if isinstance(e, EventRecord):
            if not isinstance(e.user_id, str):
                raise InvalidInputError("user_id", e.user_id, "must be a string")
        elif isinstance(e, ItemOp):
            if e.vectors is not None and np.asarray(e.vectors).reshape(-1).size % max(self.dim, 1):
                raise InvalidInputError("vectors", np.asarray(e.vectors).shape, f"rows of dimension {self.dim}")
        else:
            raise InvalidInputError("entries", e, "expected EventRecord or ItemOp")

    def _flush(self, entries: Sequence[Entry], *, after: int) -> None:
        keys = [self._log, self._head_key, self._ops, self._version_key]
        args: list[Any] = [after]
        for e in entries:
            if isinstance(e, EventRecord):
                body = json.dumps([e.user_id, e.item_id, int(e.row), e.kind, float(e.ts), e.weight, e.text])
                keys.append(self._user_prefix + e.user_id)
                args += ["e", body]
            elif e.vectors is None:
                args += ["o", json.dumps([e.op, e.payload])]
            else:
                blob = np.ascontiguousarray(e.vectors, dtype="<f4").tobytes()
                args += ["v", json.dumps([e.op, e.payload]), blob]
        with self._errors("append"):
            status, head = self._append_script(keys=keys, args=args)
        if int(status) != 0:
            raise StoreError(
                f"journal {self.path}: the write lock expired (held past {self.lock_ttl_s:g} s) and another writer "
                f"appended (the journal ends at {int(head)}, expected {after}); nothing was written"
            )

    def append_events(self, events: Sequence[tuple[str, str, int, str, float, float | None, str | None]]) -> int:
        """Durably append events ``(user_id, item_id, row, kind, ts, weight, text)``; return the last seq."""
        return self.append([EventRecord(0, *e) for e in events])

    def append_item_op(self, op: str, payload: list, vectors: np.ndarray | None = None) -> int:
        """Durably append an item operation; return its seq."""
        return self.append([ItemOp(0, op, payload, vectors)])

    def truncate_item_ops(self, upto_seq: int) -> None:
        """Delete item operations up to ``upto_seq`` from the stream and raise the floor to it
        (events stay: they are history)."""
        with self.writing(), self._errors("compaction"):
            self._truncate_script(keys=[self._log, self._floor_key, self._ops, self._version_key], args=[int(upto_seq)])

    # -- reading ---------------------------------------------------------------------------

    def _int(self, key: str) -> int:
        with self._errors("read"):
            return int(self._db.get(key) or 0)

    def _head(self) -> int:
        return int(self._db.get(self._head_key) or 0)

    def head(self) -> int:
        """The last sequence assigned by any process (it never goes back)."""
        return self._int(self._head_key)

    @property
    def last_seq(self) -> int:
        """Same as :meth:`head`."""
        return self.head()

    def floor(self) -> int:
        """Item operations up to this sequence were compacted away after a snapshot."""
        return self._int(self._floor_key)

    def version(self) -> int:
        """A counter every commit (append or compaction) of any process bumps: one ``GET``."""
        return self._int(self._version_key)

    def tail(self, after_seq: int) -> Iterator[Entry]:
        """Entries with ``seq > after_seq`` in order, a page at a time; each page is read in one
        ``MULTI`` with the floor, so a compaction between pages is noticed."""
        for page in self._pages(after_seq, None, check_floor=True):
            for stream_id, fields in page:
                yield self._decode(stream_id, fields)

    def _pages(self, after_seq: int, upto_seq: int | None, *, check_floor: bool,
               page: int = _PAGE) -> Iterator[list[tuple[bytes, dict[bytes, bytes]]]]:
        """Stream entries after ``after_seq`` (up to ``upto_seq``), ``page`` at a time."""
        pos, end = int(after_seq), "+" if upto_seq is None else f"{int(upto_seq)}-0"
        while upto_seq is None or pos < upto_seq:
            with self._errors("read"):
                pipe = self._db.pipeline(transaction=True)
                pipe.get(self._floor_key)
                pipe.xrange(self._log, min=f"({pos}-0" if pos > 0 else "-", max=end, count=page)
                floor, got = pipe.execute()
            if check_floor and pos < int(floor or 0):
                raise JournalTruncated(self.path, pos, int(floor))
            if not got:
                return
            yield got
            pos = self._decode_seq(got[-1][0])

    def replay(self, after_seq: int = 0) -> Iterator[Entry]:
        """Same as :meth:`tail`."""
        return self.tail(after_seq)

    def _decode_seq(self, stream_id: bytes) -> int:
        return int(stream_id.split(b"-", 1)[0])

    def _decode(self, stream_id: bytes, fields: dict[bytes, bytes]) -> Entry:
        seq = self._decode_seq(stream_id)
        try:
            if b"e" in fields:
                return EventRecord(seq, *json.loads(fields[b"e"]))
            op, payload = json.loads(fields[b"o"])
            vecs = None
            if b"v" in fields:
                vecs = np.frombuffer(fields[b"v"], dtype="<f4").astype(np.float32).reshape(-1, self.dim)
            return ItemOp(seq, op, payload, vecs)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"journal {self.path}: unreadable entry {seq} ({exc})") from None

    def events(self, user_id: str | None = None, *, upto: int | None = None) -> list[EventRecord]:
        """Journaled events (of one user, from the user's own list; up to ``upto``), in order."""
        limit = upto if upto is not None else self.head()
        if user_id is None:
            return [self._decode(i, f) for got in self._pages(0, limit, check_floor=False) for i, f in got
                    if b"e" in f]
        with self._errors("history"):
            raw = self._db.lrange(self._user_prefix + user_id, 0, -1)
        out = []
        for line in raw:
            seq, _, body = line.partition(b" ")
            try:
                rec = EventRecord(int(seq), *json.loads(body))
            except (TypeError, ValueError) as exc:
                raise CorruptStoreError(f"journal {self.path}: unreadable history of {user_id!r} ({exc})") from None
            if rec.seq <= limit:
                out.append(rec)
        return out

    def event_columns(self, after_seq: int, upto_seq: int, *, page: int = 1 << 16) -> Iterator[EventColumns]:
        """Events with ``after_seq < seq <= upto_seq`` as :class:`EventColumns`, a page of stream
        entries at a time."""
        for got in self._pages(after_seq, upto_seq, check_floor=False, page=page):
            events = [self._decode(i, f) for i, f in got if b"e" in f]
            if events:
                yield EventColumns.of(events)

    def tail_columns(self, after_seq: int) -> Iterator[EventColumns | ItemOp]:
        """:meth:`tail` with each run of consecutive events as one :class:`EventColumns`."""
        return columns_of_tail(self.tail(after_seq))

    def close(self) -> None:
        """Close this object's connections (the stream stays in Redis)."""
        with self._lock:
            try:
                self._db.close()
            except self._redis_errors:
                pass
