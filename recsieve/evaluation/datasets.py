"""Interaction datasets for offline evaluation: MovieLens 1M / 100K, Amazon (UniSRec files), custom.

Every loader reads from a path (nothing is bundled or downloaded) and returns a
:class:`Dataset`: the items (as :class:`~recsieve.types.Item`, with the text that gets
embedded) and, per user, the chronological sequence of item indices. Items are indexed
``0 .. n_items - 1`` in the order of :attr:`Dataset.items`.

Benchmark convention: the MovieLens loaders keep only items that occur in some interaction
(ML-1M: the 3,706 of movies.dat's 3,883 that were rated), as published full-ranking figures
do. An Amazon set keeps its indexed items (Scientific: 4,385); a custom catalog keeps every item
(cold items can still be recommended by text).

Malformed or missing files raise :class:`~recsieve.errors.InvalidInputError` (naming the
file and line) or :class:`~recsieve.errors.StoreError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError, StoreError
from recsieve.items_io import read_items
from recsieve.rendering import render
from recsieve.types import EVENT_KINDS, Item

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_ml1m",
    "load_ml100k",
    "load_amazon",
    "load_amazon_scientific",
    "load_custom",
    "write_custom",
]

_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Dataset:
    """Items and per-user chronological interaction sequences.

    ``sequences[u]`` is an int64 array of item indices (into ``items``), oldest first.
    ``timestamps[u]`` (float64 seconds) and ``kinds[u]`` (event kinds, str) are aligned with
    it when the source has them, else ``None``. ``item_texts[i]`` is ``items[i]`` rendered
    with the catalog's default template.
    """

    name: str
    items: tuple[Item, ...]
    item_texts: tuple[str, ...]
    user_ids: tuple[str, ...]
    sequences: tuple[np.ndarray, ...]
    timestamps: tuple[np.ndarray, ...] | None = None
    kinds: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.items)
        if len(self.item_texts) != n:
            raise InvalidInputError("item_texts", len(self.item_texts), f"expected {n} texts")
        if len(self.user_ids) != len(self.sequences):
            raise InvalidInputError(
                "user_ids", len(self.user_ids), f"expected {len(self.sequences)} users"
            )
        for name in ("timestamps", "kinds"):
            extra = getattr(self, name)
            if extra is not None and [len(x) for x in extra] != [len(s) for s in self.sequences]:
                raise InvalidInputError(name, len(extra), "must align with sequences")
        for u, seq in enumerate(self.sequences):
            if seq.dtype != np.int64 or seq.ndim != 1:
                raise InvalidInputError(f"sequences[{u}]", seq.dtype, "must be 1-d int64")
            if seq.size and (seq.min() < 0 or seq.max() >= n):
                raise InvalidInputError(f"sequences[{u}]", int(seq.max()), f"outside 0..{n - 1}")

    @property
    def n_items(self) -> int:
        """Number of items (the size of the ranking)."""
        return len(self.items)

    @property
    def n_users(self) -> int:
        """Number of users."""
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        """Total number of interactions over all users."""
        return int(sum(len(s) for s in self.sequences))

    @property
    def item_ids(self) -> tuple[str, ...]:
        """External item ids, by item index."""
        return tuple(item.id for item in self.items)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, users={self.n_users}, items={self.n_items}, "
            f"interactions={self.n_interactions})"
        )


# -- helpers ------------------------------------------------------------------------------


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise StoreError(f"{what}: file not found: {path}")
    return path


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without newline) of a text file, gzip transparently."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding=encoding, newline="") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


def _int(value: str, path: Path, lineno: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(
            f"{path.name} line {lineno}: {column}", value, "expected an integer"
        ) from None


def _build(
    name: str,
    items: Sequence[Item],
    users: dict[str, list[tuple[Any, int, str]]],
    *,
    keep_unused_items: bool,
    has_ts: bool,
    has_kinds: bool,
) -> Dataset:
    """Sort each user's (sort key, item index, kind) events stably and pack a Dataset.

    The sort key is a timestamp or ``None`` (keep the given order); equal keys keep file order.
    """
    if not keep_unused_items:
        used = np.zeros(len(items), bool)
        for events in users.values():
            used[[e[1] for e in events]] = True
        remap = np.full(len(items), -1, np.int64)
        remap[used] = np.arange(int(used.sum()))
        items = [it for it, u in zip(items, used, strict=True) if u]
    else:
        remap = np.arange(len(items), dtype=np.int64)
    user_ids, seqs, stamps, kinds = [], [], [], []
    for uid, events in users.items():
        if has_ts:
            events = sorted(events, key=lambda e: e[0])  # stable: ties keep file order
        user_ids.append(uid)
        seqs.append(remap[np.fromiter((e[1] for e in events), np.int64, len(events))])
        if has_ts:
            stamps.append(np.array([e[0] for e in events], np.float64))
        if has_kinds:
            kinds.append(tuple(e[2] for e in events))
    return Dataset(
        name=name,
        items=tuple(items),
        item_texts=tuple(render(item) for item in items),
        user_ids=tuple(user_ids),
        sequences=tuple(seqs),
        timestamps=tuple(stamps) if has_ts else None,
        kinds=tuple(kinds) if has_kinds else None,
    )


def _movie(movie_id: str, title: str, genres: Sequence[str]) -> Item:
    meta: dict[str, Any] = {}
    year = _YEAR_RE.search(title)
    if year:
        meta["year"] = int(year.group(1))
    if genres:
        meta["genre"] = genres[0]
    return Item(id=movie_id, title=title.strip(), categories=tuple(genres), metadata=meta)


# -- MovieLens 1M -------------------------------------------------------------------------


def _ml1m_movies(path: Path) -> list[Item]:
    items = []
    for lineno, line in _lines(_need(path, "ml-1m movies"), "latin-1"):
        parts = line.split("::")
        if len(parts) != 3:
            raise InvalidInputError(
                f"{path.name} line {lineno}", line, "expected MovieID::Title::Genres"
            )
        _int(parts[0], path, lineno, "MovieID")
        genres = [g for g in parts[2].split("|") if g and g != "(no genres listed)"]
        items.append(_movie(parts[0], parts[1], genres))
    return items


def load_ml1m(path: str | Path) -> Dataset:
    """MovieLens 1M from a directory (or one interaction file inside it) plus ``movies.dat``.

    Interactions come from the first that exists: ``ratings.dat``
    (``UserID::MovieID::Rating::Timestamp``, sorted per user by timestamp, ties in file
    order), ``sequences.tsv`` (header ``UserID<TAB>MovieIDs_chronological``, space-separated
    MovieIDs, oldest first; no timestamps), or ``ratings*.dat.gz``. Item text is
    ``"Title (Year). Genre, Genre"``; metadata holds ``year`` and the first ``genre``.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [
            folder / "ratings.dat",
            folder / "sequences.tsv",
            *sorted(folder.glob("ratings*.dat.gz")),
        ]
        source = next((p for p in found if p.is_file()), None)
        if source is None:
            raise StoreError(f"ml-1m: no ratings.dat, sequences.tsv or ratings*.dat.gz in {folder}")
    else:
        source = _need(path, "ml-1m interactions")
    items = _ml1m_movies(folder / "movies.dat")
    index = {item.id: i for i, item in enumerate(items)}
    users: dict[str, list[tuple[Any, int, str]]] = {}

    def item_index(movie: str, lineno: int) -> int:
        try:
            return index[movie]
        except KeyError:
            raise InvalidInputError(
                f"{source.name} line {lineno}: MovieID", movie, "not in movies.dat"
            ) from None

    if source.name.endswith(".tsv"):
        lines = _lines(source)
        header = next(lines, (0, ""))[1].split("\t")
        if header[:1] != ["UserID"] or len(header) != 2:
            raise InvalidInputError(
                f"{source.name} line 1",
                "\t".join(header),
                "expected header UserID<TAB>MovieIDs_chronological",
            )
        for lineno, line in lines:
            parts = line.split("\t")
            if len(parts) != 2:
                raise InvalidInputError(
                    f"{source.name} line {lineno}", line[:80], "expected 2 columns"
                )
            _int(parts[0], source, lineno, "UserID")
            if parts[0] in users:
                raise InvalidInputError(
                    f"{source.name} line {lineno}: UserID", parts[0], "repeated user"
                )
            users[parts[0]] = [(None, item_index(m, lineno), "rating") for m in parts[1].split()]
        has_ts = False
    else:
        for lineno, line in _lines(source, "latin-1"):
            parts = line.split("::")
            if len(parts) != 4:
                raise InvalidInputError(
                    f"{source.name} line {lineno}",
                    line,
                    "expected UserID::MovieID::Rating::Timestamp",
                )
            _int(parts[0], source, lineno, "UserID")
            ts = _int(parts[3], source, lineno, "Timestamp")
            users.setdefault(parts[0], []).append((ts, item_index(parts[1], lineno), "rating"))
        has_ts = True
    return _build("ml-1m", items, users, keep_unused_items=False, has_ts=has_ts, has_kinds=False)


# -- MovieLens 100K -----------------------------------------------------------------------


def load_ml100k(path: str | Path) -> Dataset:
    """MovieLens 100K from a directory with ``u.data``, ``u.item`` (Latin-1) and ``u.genre``.

    ``u.data`` is ``user<TAB>item<TAB>rating<TAB>timestamp``; each user's events are sorted by
    timestamp (ties in file order). ``u.item`` is pipe-separated with 19 genre flags named
    by ``u.genre``.
    """
    folder = Path(path)
    genre_path = _need(folder / "u.genre", "ml-100k genres")
    genres: dict[int, str] = {}
    for lineno, line in _lines(genre_path, "latin-1"):
        name, _, idx = line.rpartition("|")
        genres[_int(idx, genre_path, lineno, "genre index")] = name
    names = [genres[i] for i in sorted(genres)]
    item_path = _need(folder / "u.item", "ml-100k items")
    items = []
    for lineno, line in _lines(item_path, "latin-1"):
        parts = line.split("|")
        if len(parts) != 5 + len(names):
            raise InvalidInputError(
                f"{item_path.name} line {lineno}", line[:80], f"expected {5 + len(names)} fields"
            )
        _int(parts[0], item_path, lineno, "movie id")
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise InvalidInputError(
                f"{item_path.name} line {lineno}: genres", flags, "flags must be 0/1"
            )
        chosen = [n for n, f in zip(names, flags, strict=True) if f == "1" and n != "unknown"]
        items.append(_movie(parts[0], parts[1], chosen))
    index = {item.id: i for i, item in enumerate(items)}
    data_path = _need(folder / "u.data", "ml-100k interactions")
    users: dict[str, list[tuple[Any, int, str]]] = {}
    for lineno, line in _lines(data_path):
        parts = line.split("\t")
        if len(parts) != 4:
            raise InvalidInputError(
                f"{data_path.name} line {lineno}", line, "expected user, item, rating, timestamp"
            )
        _int(parts[0], data_path, lineno, "user")
        if parts[1] not in index:
            raise InvalidInputError(
                f"{data_path.name} line {lineno}: item", parts[1], "not in u.item"
            )
        ts = _int(parts[3], data_path, lineno, "timestamp")
        users.setdefault(parts[0], []).append((ts, index[parts[1]], "rating"))
    users = dict(sorted(users.items(), key=lambda kv: int(kv[0])))
    return _build("ml-100k", items, users, keep_unused_items=False, has_ts=True, has_kinds=False)


# -- Amazon Scientific (UniSRec atomic files) ---------------------------------------------


def _inter(path: Path) -> Iterator[tuple[int, str, list[str], str]]:
    lines = _lines(_need(path, "amazon interactions"))
    header = next(lines, (0, ""))[1]
    if not header.startswith("user_id:token\titem_id_list:token_seq\titem_id:token"):
        raise InvalidInputError(f"{path.name} line 1", header, "expected the UniSRec .inter header")
    for lineno, line in lines:
        parts = line.split("\t")
        if len(parts) != 3:
            raise InvalidInputError(f"{path.name} line {lineno}", line[:80], "expected 3 columns")
        yield lineno, parts[0], parts[1].split(), parts[2]


def load_amazon_scientific(path: str | Path) -> Dataset:
    """Amazon Industrial & Scientific: :func:`load_amazon` with the prefix ``Scientific``."""
    return load_amazon(path, "Scientific")


def amazon_prefix(folder: Path) -> str:
    """The ``{prefix}`` of the one UniSRec Amazon set in ``folder`` (from its ``*.item2index``)."""
    found = sorted(p.name[: -len(".item2index")] for p in folder.glob("*.item2index"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise StoreError(f"amazon: {what} *.item2index files in {folder}; expected one set's files")
    return found[0]


def load_amazon(path: str | Path, prefix: str | None = None) -> Dataset:
    """An Amazon set in UniSRec's atomic files, one set per directory (Scientific, Office,
    Instruments, Arts, Pantry, …; ``prefix`` found from the folder's ``*.item2index`` if not given).

    Reads ``{prefix}.text`` (header, then ``ASIN<TAB>text``: title, categories and brand),
    ``{prefix}.item2index`` / ``{prefix}.user2index`` (id<TAB>integer) and the
    ``.train/.valid/.test.inter`` files (``user<TAB>history<TAB>target``, history capped at 50
    items). Each user's full sequence is rebuilt: the shortest training history plus the
    target of every example in time order (training examples are listed newest first, then
    valid, then test), checking that every example's history is the tail of the sequence so far.
    """
    folder = Path(path)
    prefix = prefix or amazon_prefix(folder)
    p = {ext: folder / f"{prefix}.{ext}" for ext in ("text", "item2index", "user2index")}
    item_of: dict[str, str] = {}  # integer token -> ASIN
    for lineno, line in _lines(_need(p["item2index"], "amazon item index")):
        parts = line.split("\t")
        if len(parts) != 2:
            raise InvalidInputError(
                f"{p['item2index'].name} line {lineno}", line, "expected ASIN<TAB>index"
            )
        _int(parts[1], p["item2index"], lineno, "index")
        item_of[parts[1]] = parts[0]
    user_of: dict[str, str] = {}
    for lineno, line in _lines(_need(p["user2index"], "amazon user index")):
        parts = line.split("\t")
        if len(parts) != 2:
            raise InvalidInputError(
                f"{p['user2index'].name} line {lineno}", line, "expected user<TAB>index"
            )
        user_of[parts[1]] = parts[0]
    texts: dict[str, str] = {}
    lines = _lines(_need(p["text"], "amazon item texts"))
    next(lines, None)  # header: item_id:token<TAB>text:token_seq
    for lineno, line in lines:
        asin, sep, text = line.partition("\t")
        if not sep:
            raise InvalidInputError(
                f"{p['text'].name} line {lineno}", line[:80], "expected ASIN<TAB>text"
            )
        texts[asin] = text.strip()
    order = sorted(item_of, key=int)
    missing = [item_of[t] for t in order if item_of[t] not in texts]
    if missing:
        raise InvalidInputError(f"{p['text'].name}: ASIN", missing[0], "indexed item without text")
    items = [Item(id=item_of[t], title=texts[item_of[t]]) for t in order]
    position = {t: i for i, t in enumerate(order)}

    per_stage: dict[str, dict[str, list[tuple[Path, int, list[str], str]]]] = {}
    for stage in ("train", "valid", "test"):
        inter_path = folder / f"{prefix}.{stage}.inter"
        found = per_stage[stage] = {}
        for lineno, user, hist, target in _inter(inter_path):
            for tok in (*hist, target):
                if tok not in position:
                    raise InvalidInputError(
                        f"{inter_path.name} line {lineno}: item", tok, "not in item2index"
                    )
            if user not in user_of:
                raise InvalidInputError(
                    f"{inter_path.name} line {lineno}: user", user, "not in user2index"
                )
            found.setdefault(user, []).append((inter_path, lineno, hist, target))
    users: dict[str, list[tuple[Any, int, str]]] = {}
    for user in sorted(set().union(*per_stage.values()), key=int):
        chain = [
            *reversed(per_stage["train"].get(user, [])),
            *per_stage["valid"].get(user, []),
            *per_stage["test"].get(user, []),
        ]
        seq = list(chain[0][2])
        for inter_path, lineno, hist, target in chain:
            if not hist or seq[-len(hist) :] != hist:
                raise InvalidInputError(
                    f"{inter_path.name} line {lineno}: history",
                    " ".join(hist[-5:]),
                    "does not continue the user's earlier examples",
                )
            seq.append(target)
        users[user_of[user]] = [(None, position[t], "purchase") for t in seq]
    return _build(
        f"amazon-{prefix.lower()}", items, users, keep_unused_items=True, has_ts=False, has_kinds=False
    )


# -- custom -------------------------------------------------------------------------------


def _ts(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ts = float(value)
    elif isinstance(value, datetime):
        ts = value.timestamp()
    elif isinstance(value, str):
        try:
            ts = float(value)
        except ValueError:
            try:
                ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise InvalidInputError(
                    where, value, "expected seconds or an ISO-8601 time"
                ) from None
    else:
        raise InvalidInputError(where, value, "expected seconds or an ISO-8601 time")
    if not math.isfinite(ts):
        raise InvalidInputError(where, value, "must be finite")
    return ts


def _interaction_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for bad files
            raise StoreError(f"cannot read {path}: {exc}") from exc
        for i, row in enumerate(table.to_pylist(), 1):
            yield i, row
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        if None in row:
            raise InvalidInputError(
                f"{path.name} line {reader.line_num}", row[None], "too many cells"
            )
        yield reader.line_num, row


def load_custom(path: str | Path) -> Dataset:
    """Your own data: a directory with ``interactions.csv|.parquet`` and ``items.jsonl|.csv|.parquet``.

    Interactions have columns ``user_id, item_id, ts`` (seconds, or ISO-8601 text) and
    optionally ``kind`` (one of :data:`~recsieve.types.EVENT_KINDS`, default ``click``) and
    ``rating`` (ignored by the protocol). Items are in the catalog format
    (:func:`recsieve.items_io.read_items`). Events are sorted per user by ``ts``, ties in file
    order. Every catalog item is ranked, also those nobody interacted with.
    """
    folder = Path(path)
    inter = next(
        (
            folder / f"interactions.{e}"
            for e in ("csv", "parquet")
            if (folder / f"interactions.{e}").is_file()
        ),
        None,
    )
    item_file = next(
        (
            folder / f"items.{e}"
            for e in ("jsonl", "csv", "parquet")
            if (folder / f"items.{e}").is_file()
        ),
        None,
    )
    if inter is None:
        raise StoreError(f"custom: no interactions.csv or interactions.parquet in {folder}")
    if item_file is None:
        raise StoreError(f"custom: no items.jsonl, items.csv or items.parquet in {folder}")
    items = read_items(item_file)
    index = {item.id: i for i, item in enumerate(items)}
    users: dict[str, list[tuple[Any, int, str]]] = {}
    for lineno, row in _interaction_rows(inter):
        where = f"{inter.name} line {lineno}"
        missing = [c for c in ("user_id", "item_id", "ts") if c not in row]
        if missing:
            raise InvalidInputError(f"{where}: columns", sorted(row), f"missing {missing}")
        user = "" if row["user_id"] is None else str(row["user_id"]).strip()
        if not user:
            raise InvalidInputError(f"{where}: user_id", row["user_id"], "must be non-empty")
        item = "" if row["item_id"] is None else str(row["item_id"]).strip()
        if item not in index:
            raise InvalidInputError(f"{where}: item_id", item, f"not in {item_file.name}")
        kind = row.get("kind") or "click"
        if kind not in EVENT_KINDS:
            raise InvalidInputError(
                f"{where}: kind", kind, f"expected one of {sorted(EVENT_KINDS)}"
            )
        users.setdefault(user, []).append((_ts(row["ts"], f"{where}: ts"), index[item], kind))
    return _build(
        folder.name or "custom", items, users, keep_unused_items=True, has_ts=True, has_kinds=True
    )


def write_custom(path: str | Path, items: Iterable[Item], sequences: Iterable[tuple[str, Sequence[str]]]) -> None:
    """Write a folder :func:`load_custom` reads: ``items.jsonl`` (each item's catalog record) and
    ``interactions.csv`` (``user_id, item_id, ts``; ``ts`` is the event's 1-based position in its
    user's sequence, so the order is kept). ``sequences``: ``(user id, item ids oldest first)``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(item.to_dict()) + "\n" for item in items)
    with open(folder / "interactions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "ts"])
        for user, seq in sequences:
            writer.writerows([user, item, t] for t, item in enumerate(seq, 1))


#: Dataset name -> loader, as accepted by :func:`load_dataset`.
DATASETS = {
    "ml-1m": load_ml1m,
    "ml-100k": load_ml100k,
    "amazon-scientific": load_amazon_scientific,
    "amazon": load_amazon,
    "custom": load_custom,
}


def load_dataset(name: str, path: str | Path) -> Dataset:
    """Load the dataset ``name`` (one of :data:`DATASETS`) from ``path``."""
    if name not in DATASETS:
        raise InvalidInputError("dataset", name, f"expected one of {sorted(DATASETS)}")
    return DATASETS[name](path)
