"""Rebuilding a vector index off its write lock, shared by the implementations that compact.

:class:`OffLockRebuilds` is a mixin for an index that serves from one state behind a readers-writer
lock (``_lock``) and now and then replaces that state whole (a compaction, a re-training): under
the lock it only takes a snapshot of the serving state (:meth:`~OffLockRebuilds._begin`) and starts
recording writes; the new state is built from the snapshot (:meth:`~OffLockRebuilds._build`) while
searches and writes go on against the serving one; the writes recorded meanwhile are replayed on
the new state (:meth:`~OffLockRebuilds._replay`), most of them off the lock and the last few under
the write lock, which then swaps the new state in (:meth:`~OffLockRebuilds._swap`). One rebuild runs
at a time. One that fails or is cancelled leaves the serving state as it was and its partial new
state is discarded (:meth:`~OffLockRebuilds._discard`); an automatic one that fails is logged, and
automatic retries wait until as many items as :meth:`~OffLockRebuilds._retry_after` says have been
written again.

A rebuild runs in a background thread (automatic, or ``compact(wait=False)``), in the caller's
thread (``compact()``), or in a writer's thread after it released the lock when the writer's
change makes a rebuild due at once (:meth:`~OffLockRebuilds._rebuild_here`: an IVF reaching its
training size, a table reaching the size of its first ANN index), so the write returns with it done
while other threads' searches and writes go on. :meth:`~OffLockRebuilds.close` cancels a background
rebuild and waits for any to end.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from recsieve.locks import RWLock

__all__ = ["Cancelled", "LogEntry", "OffLockRebuilds", "CATCH_UP_PASSES"]

log = logging.getLogger("recsieve")

#: Replays of the recorded writes outside the write lock before the last one under it.
CATCH_UP_PASSES = 4


class Cancelled(Exception):
    """A rebuild stopped because its index was closed."""


class LogEntry(NamedTuple):
    """One write made during a rebuild: an upsert (``vectors`` set) or a removal."""

    ids: np.ndarray
    vectors: np.ndarray | None
    rows: list[dict[str, Any]] | None
    new_fields: Mapping[str, str] | None


def logged_items(entries: Sequence[LogEntry]) -> int:
    """How many items the recorded writes ``entries`` touch (counted once per write)."""
    return sum(len(e.ids) for e in entries)


class OffLockRebuilds:
    """Mixin: rebuilds of an index's serving state off its write lock (see the module docstring).

    The index calls :meth:`_init_rebuilds` in its constructor, :meth:`_record` for every write
    under its write lock, and :meth:`_start_background` (a writer, under the lock) or
    :meth:`_rebuild_here` (a writer, after releasing it) when its writes make a rebuild due. It
    implements :meth:`_begin`, :meth:`_build`, :meth:`_replay`, :meth:`_swap` and
    :meth:`_describe`, and may implement :meth:`_discard`, :meth:`_due_here`,
    :meth:`_retry_after` and :meth:`_in_background_thread`.
    """

    _lock: RWLock
    #: A catch-up pass that found at most this many logged items is followed by the swap.
    _swap_at = 256
    #: The name of a background rebuild's thread.
    _thread_name = "recsieve-index-rebuild"

    def _init_rebuilds(self) -> None:
        self._compacting = threading.Lock()  # held while a rebuild runs
        self._log: list[LogEntry] | None = None  # the writes made meanwhile (None: none runs)
        self._cancel = threading.Event()  # set by close(): background rebuilds stop
        self._written = 0  # items upserted or removed so far
        self._retry_at = 0  # after a failed background rebuild: _written before the next try

    # ------------------------------------------------------------------ what an index supplies

    def _begin(self, **options: Any) -> Any:
        """A snapshot of the serving state for a rebuild (``options``: the index's own, from
        :meth:`_rebuild_now`). Caller holds the lock (read or write) and the compaction lock."""
        raise NotImplementedError

    def _build(self, snap: Any, cancel: threading.Event) -> Any:
        """The new state built from ``snap``, off the lock (raise :class:`Cancelled` once
        ``cancel`` is set, between steps)."""
        raise NotImplementedError

    def _replay(self, new: Any, entries: Sequence[LogEntry]) -> None:
        """Apply the recorded writes ``entries`` to ``new``, in order."""
        raise NotImplementedError

    def _swap(self, new: Any) -> Any:
        """Under the write lock: make ``new`` the serving state; return the old one."""
        raise NotImplementedError

    def _describe(self, snap: Any) -> str:
        """A few words on the rebuild of ``snap`` for the log (``"FAISS hnsw rebuild of 280 items"``)."""
        raise NotImplementedError

    def _discard(self, state: Any) -> None:
        """Release a state nobody serves from any more: a replaced one, or a snapshot or new state
        of a rebuild that failed (called once or more for one)."""

    def _due_here(self) -> bool:
        """Under the lock: whether a writer must rebuild in its own thread now."""
        return False

    def _retry_after(self, snap: Any) -> int:
        """Items to write after a failed automatic rebuild of ``snap`` before the next try."""
        return 64

    def _in_background_thread(self) -> None:
        """Set up a background rebuild's thread (its native thread settings) before it builds."""

    # ------------------------------------------------------------------ the machinery

    def _record(self, entry: LogEntry) -> None:
        """Under the write lock: note a write for the rebuild in flight, if any."""
        if self._log is not None:
            self._log.append(entry)

    def _begin_or_log(self) -> Any:
        """:meth:`_begin`, or None after logging why it failed (a writer's rebuild: the write is
        done; the next automatic try waits for 64 more items written)."""
        try:
            return self._begin()
        except Exception:
            self._retry_at = self._written + 64
            log.exception("recsieve: a rebuild could not start; the current index keeps serving")
            return None

    def _start_background(self) -> bool:
        """Start a background rebuild unless one runs or the index is closed; return whether it
        started (a snapshot that fails is logged: not started). Caller holds the lock (read or
        write)."""
        if self._cancel.is_set() or not self._compacting.acquire(blocking=False):
            return False  # closed, or one runs already (the next write after it checks again)
        try:
            snap = self._begin_or_log()
        except BaseException:  # an interrupt
            self._compacting.release()
            raise
        if snap is None:
            self._compacting.release()
            return False
        try:
            self._log = []
            # A daemon thread, but never inside native code when the interpreter finalises (a
            # thread coming back from C++ then would abort the process): close() runs at exit first.
            atexit.register(self.close)
            threading.Thread(target=self._background, args=(snap,), name=self._thread_name, daemon=True).start()
        except BaseException:
            atexit.unregister(self.close)
            self._log = None
            self._discard(snap)
            self._compacting.release()
            raise
        return True

    def _background(self, snap: Any) -> None:
        """The body of a background rebuild's thread (it holds the compaction lock)."""
        try:
            self._in_background_thread()
            try:
                self._run(snap, self._cancel)
                self._retry_at = 0
            except Cancelled:
                return
            except Exception:
                self._failed(snap)
                return
            finally:
                self._compacting.release()
            self._rebuild_here(self._cancel)  # a write may have made one due meanwhile
        finally:
            atexit.unregister(self.close)

    def _failed(self, snap: Any) -> None:
        """Log the failure of an automatic rebuild (in an ``except`` block); the next automatic
        try waits until :meth:`_retry_after` items have been written again."""
        self._retry_at = self._written + self._retry_after(snap)
        log.exception("recsieve: %s failed; the current index keeps serving", self._describe(snap))

    def _run(self, snap: Any, cancel: threading.Event) -> None:
        """Build the new state off the lock, apply the writes logged meanwhile, swap it in. Any
        failure leaves the current state serving and stops the log. Holds the compaction lock."""
        try:
            try:
                new = self._build(snap, cancel)
            except BaseException:
                self._discard(snap)
                raise
            try:
                for _ in range(CATCH_UP_PASSES):
                    if cancel.is_set():
                        raise Cancelled
                    with self._lock.read():  # excludes writers, the only other users of the log
                        entries, self._log = self._log, []
                    self._replay(new, entries)
                    if logged_items(entries) <= self._swap_at:
                        break
                with self._lock.write():
                    self._replay(new, self._log)
                    old, self._log = self._swap(new), None
            except BaseException:
                self._discard(new)
                raise
        except BaseException:
            with self._lock.write():
                self._log = None
            raise
        self._discard(old)

    def _rebuild_here(self, cancel: threading.Event | None = None) -> None:
        """Rebuild in this thread if :meth:`_due_here` and no rebuild runs. One that runs calls
        this when it ends, so a write arriving meanwhile neither waits for it nor leaves the
        rebuild undone. A failure is logged: the write that called it is done, and the current
        state keeps serving it. ``cancel``: a background thread's (set by :meth:`close`)."""
        if self._written < self._retry_at or not self._compacting.acquire(blocking=False):
            return  # after a failure: later; or the running rebuild calls this when it ends
        try:
            cancel = cancel or threading.Event()
            with self._lock.read():
                if cancel.is_set() or not self._due_here():
                    return
                snap = self._begin_or_log()
                if snap is None:
                    return
                self._log = []
            try:
                self._run(snap, cancel)
            except Cancelled:
                pass
            except Exception:
                self._failed(snap)
        finally:
            self._compacting.release()

    def _rebuild_now(self, **options: Any) -> None:
        """Rebuild in the caller's thread, after waiting for a rebuild already running; a failure
        propagates (the current state keeps serving)."""
        with self._compacting:
            with self._lock.read():
                snap = self._begin(**options)
                self._log = []
            self._run(snap, threading.Event())
            self._retry_at = 0
        self._rebuild_here()  # a write may have made one due while this one ran

    # ------------------------------------------------------------------ public

    def compact(self, *, wait: bool = True) -> bool:
        """Rebuild now, off the write lock: searches and writes go on against the current index,
        and the writes made meanwhile reach the new one before it replaces the current one.

        ``wait=True``: in the caller's thread, after waiting for a compaction already running;
        if the rebuild raises, the current index keeps serving and the error propagates.
        ``wait=False``: in a background thread, as an automatic compaction (failures logged,
        cancelled by :meth:`close`), unless one runs already or the index is closed. Returns
        whether a compaction ran (``wait``) or started."""
        if not wait:
            with self._lock.read():
                return self._start_background()
        self._rebuild_now()
        return True

    @property
    def compacting(self) -> bool:
        """Whether a compaction is running (in the background or in some caller's thread)."""
        return self._compacting.locked()

    def wait_for_compaction(self, timeout: float | None = None) -> bool:
        """Wait until no compaction runs (at most ``timeout`` seconds); return whether none does."""
        if not self._compacting.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self._compacting.release()
        return True

    def close(self) -> None:
        """Cancel a background compaction (the current index keeps serving) and wait for any
        compaction to end. The index stays usable; later compactions run only when asked for
        (:meth:`compact`) or when a write makes one due at once."""
        self._cancel.set()
        self.wait_for_compaction()
