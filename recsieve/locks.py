"""Locks: a readers-writer lock between threads, and a file lock between processes.

:class:`RWLock` is used where reads far outnumber writes and must not block one another (the
vector indexes). :class:`FileLock` makes one writer of several processes sharing a directory
(snapshots and model switches of an engine directory), shared or exclusive.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsieve.errors import StoreError

try:  # POSIX; elsewhere (Windows) FileLock does not lock, and one process should use a directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RWLock", "FileLock"]


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared."""
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class FileLock:
    """An advisory lock on ``path`` (``flock``), held shared or exclusive, between processes and
    between the threads of one process (each hold opens the file anew, so two holds conflict
    wherever they come from). Released when the block ends or the process dies, even by SIGKILL.

    The file is created on first use and never removed. Not re-entrant: a thread holding the
    lock exclusively must not ask for it again (it would wait for itself).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock shared: other shared holders may hold it too, an exclusive one waits."""
        with self._hold(exclusive=False):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone."""
        with self._hold(exclusive=True):
            yield

    @contextmanager
    def _hold(self, exclusive: bool) -> Iterator[None]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # a read-only directory: lock the file if it is there
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise StoreError(f"lock file {self.path}: cannot open it ({exc.strerror})") from None
        except OSError as exc:
            raise StoreError(f"lock file {self.path}: cannot open it ({exc.strerror})") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
