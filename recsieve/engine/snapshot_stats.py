"""Recall statistics in an engine snapshot, and brought up to date from the journal with numpy.

A snapshot holds, beside the catalog, vectors, index and users, ``statistics.npz``: each
statistics channel's :meth:`~recsieve.engine.recall.RecallChannel.state` (transitions as
compressed sparse rows, popularity counts) and each user's last positive row (what the next
transition starts from), all as of the snapshot's sequence, which the manifest records
(``meta["statistics"]["seq"]``). Opening installs them and replays only the events after that
sequence; a snapshot without them (written before they were saved) is rebuilt from every event.

Either way events are read from the journal a page of columns at a time
(:meth:`~recsieve.engine.journal.SQLiteJournal.event_columns`) and observed with numpy
(:func:`observe_events`), with exactly the statistics the per-event rule
(``Store._observe`` and each channel's :meth:`~recsieve.engine.recall.RecallChannel.observe`)
gives.
"""

from __future__ import annotations

import gc
import zipfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.engine.journal import JournalBackend
from recsieve.engine.recall import RecallChannel
from recsieve.engine.users import UserStore
from recsieve.errors import CorruptStoreError
from recsieve.storage import pack_strings, unpack_strings

__all__ = ["STATS_FILE", "paused_gc", "save_statistics", "read_statistics", "install_statistics", "observe_events",
           "replay_statistics", "previous_positive_rows"]

#: The statistics' file in a snapshot generation.
STATS_FILE = "statistics.npz"
_FORMAT = 1
_LAST = "last_row"


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a snapshot is read and the journal replayed:
    those build millions of objects that are all kept, which the collector would otherwise scan
    again and again (a third of a 100k-item open). Memory is still freed by reference counting."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def save_statistics(folder: Path, channels: Sequence[RecallChannel], last_row: Mapping[str, int],
                    seq: int) -> dict[str, Any]:
    """Write the channels' statistics and the users' last positive rows into ``folder`` (call it
    with every event up to ``seq`` observed and no other); return the manifest's entry."""
    arrays: dict[str, np.ndarray] = {}
    names = []
    for ch in channels:
        state = ch.state()
        if state is None:
            continue
        names.append(ch.name)
        arrays.update({f"{ch.name}.{key}": np.asarray(value) for key, value in state.items()})
    users = list(last_row)
    arrays[f"{_LAST}.users"], arrays[f"{_LAST}.offsets"] = pack_strings(users)
    arrays[f"{_LAST}.rows"] = np.fromiter((last_row[u] for u in users), dtype=np.int64, count=len(users))
    np.savez(folder / STATS_FILE, **arrays)
    return {"file": STATS_FILE, "format": _FORMAT, "seq": int(seq), "channels": names, "users": len(users)}


def read_statistics(folder: Path, entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The statistics a snapshot folder holds (``entry``: the manifest's ``meta["statistics"]``),
    read into memory: ``{"arrays", "channels", "seq"}``; ``None`` when it holds none (a
    snapshot written before they were saved)."""
    if not entry:
        return None
    path = folder / str(entry.get("file", STATS_FILE))
    if entry.get("format") != _FORMAT:
        raise CorruptStoreError(f"{path}: recall statistics of format {entry.get('format')!r}; "
                                f"this recsieve reads {_FORMAT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        seq, channels = int(entry["seq"]), [str(name) for name in entry["channels"]]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise CorruptStoreError(f"{path}: unreadable recall statistics ({exc!r})") from None
    return {"arrays": arrays, "channels": channels, "seq": seq, "path": path}


def install_statistics(saved: Mapping[str, Any] | None,
                       channels: Sequence[RecallChannel]) -> tuple[dict[str, int], int] | None:
    """Put statistics :func:`read_statistics` read into fresh ``channels``; return ``(last
    positive row per user, the sequence they include)``, or ``None`` (channels untouched) when
    there are none for one of the channels that keep statistics (they are then rebuilt)."""
    if saved is None:
        return None
    wanted = [ch for ch in channels if type(ch).state is not RecallChannel.state]
    if any(ch.name not in saved["channels"] for ch in wanted):
        return None
    arrays, path = saved["arrays"], saved["path"]
    try:
        users = unpack_strings(arrays[f"{_LAST}.users"], arrays[f"{_LAST}.offsets"])
        rows = arrays[f"{_LAST}.rows"].astype(np.int64).tolist()
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(f"{path}: unreadable users' last rows ({exc!r})") from None
    if len(users) != len(rows):
        raise CorruptStoreError(f"{path}: {len(users)} users but {len(rows)} last rows")
    for ch in wanted:
        prefix = f"{ch.name}."
        try:
            ch.load_state({key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)})
        except CorruptStoreError as exc:
            raise CorruptStoreError(f"{path}: {exc}") from None
    return dict(zip(users, rows)), int(saved["seq"])


def previous_positive_rows(users: Sequence[str], rows: np.ndarray, positive: np.ndarray,
                           last_row: MutableMapping[str, int]) -> np.ndarray:
    """For events in journal order, each one's user's previous positive row (``-1``: none):
    the latest positive event of that user before it, else ``last_row[user]``. Then
    ``last_row`` is brought past these events. A stable sort by user keeps each user's events
    in order; a running maximum of positive positions finds the previous one."""
    n = len(users)
    code = {u: i for i, u in enumerate(dict.fromkeys(users))}
    user = np.fromiter(map(code.__getitem__, users), dtype=np.int64, count=n)
    ids = list(code)
    start = np.fromiter((last_row.get(u, -1) for u in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(user, kind="stable")
    su, sr, sp = user[order], rows[order], positive[order]
    seen = np.maximum.accumulate(np.where(sp, np.arange(n), -1))  # last positive at or before
    before = np.concatenate([[-1], seen[:-1]])
    first = np.ones(n, dtype=bool)
    first[1:] = su[1:] != su[:-1]
    starts = np.flatnonzero(first)
    group_start = np.repeat(starts, np.diff(np.append(starts, n)))
    prev = np.empty(n, dtype=np.int64)
    prev[order] = np.where(before >= group_start, sr[before], start[su])
    ends = np.append(starts[1:], n) - 1
    last = seen[ends]
    for k in np.flatnonzero(last >= starts).tolist():
        last_row[ids[int(su[starts[k]])]] = int(sr[last[k]])
    return prev


def observe_events(channels: Sequence[RecallChannel], last_row: MutableMapping[str, int],
                   users: Sequence[str], rows: np.ndarray, positive: np.ndarray) -> None:
    """Observe events (journal order) in every channel at once, as the per-event rule would
    one by one, and bring ``last_row`` past them."""
    if not len(users):
        return
    rows = np.asarray(rows, dtype=np.int64)
    positive = np.asarray(positive, dtype=bool)
    prev = previous_positive_rows(users, rows, positive, last_row)
    for ch in channels:
        ch.observe_many(prev, rows, positive)


def replay_statistics(journal: JournalBackend, users: UserStore, channels: Sequence[RecallChannel],
                      last_row: MutableMapping[str, int], after_seq: int, upto_seq: int) -> int:
    """Observe the journal's events with ``after_seq < seq <= upto_seq``; return how many."""
    n = 0
    for batch in journal.event_columns(after_seq, upto_seq):
        try:
            positive = users.event_weights(batch.kinds, batch.weights) > 0
        except KeyError as exc:
            raise CorruptStoreError(f"journal: an event of unknown kind {exc}") from None
        observe_events(channels, last_row, batch.users, batch.rows, positive)
        n += len(batch)
    return n
