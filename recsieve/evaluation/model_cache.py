"""A cache of the models ``recsieve evaluate`` trains, so that repeating a command reuses them.

A system that can be cached is a :class:`CacheableScorer`: besides ``fit`` and ``score`` it says
what determines its trained state (:meth:`~CacheableScorer.cache_settings`, ``None`` when there
is nothing to cache), writes that state into a folder after ``fit``
(:meth:`~CacheableScorer.save_fitted`), and gets ready to ``score`` from such a folder instead of
training (:meth:`~CacheableScorer.load_fitted`, which is given the same training sequences as
``fit``, for the cheap, untrained parts such as an engine's catalog and event log).

An entry's key is the sha256 of everything that went into the model: the dataset's name and a
fingerprint of its data (:func:`dataset_fingerprint`: the items with every field and their
texts, the users, their sequences, timestamps and kinds, as loaded from the data files), the
split (``users``, ``seed``, ``stage``, ``min_len``, ``cold_items``), the system's name and
settings (budgets included), the recsieve version and a fingerprint of the code that trains
(:func:`code_fingerprint` of :data:`TRAINING_CODE` and the system's own module; the items'
text vectors: of :data:`EMBEDDING_CODE`), so a cached model never outlives the code that
trained it, even while the version number stays the same. An entry is a folder
``<dataset>-<system>-<key>/`` holding ``state/`` and ``ENTRY.json`` (the key, what it was made
of, and the sha256 of every file of ``state/``). It is assembled in a temporary folder and
renamed into place when complete, so an entry is either whole or absent. An entry that does not
check out (a file missing or changed, no ``ENTRY.json``) or that fails to load is logged,
removed and trained again; a cache that cannot be written is logged and the run goes on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recsieve import __version__
from recsieve.evaluation.datasets import Dataset
from recsieve.storage import fsync_dir, sha256_file, user_cache_dir

__all__ = [
    "CacheableScorer",
    "ModelCache",
    "CACHE_FORMAT",
    "default_cache_dir",
    "dataset_fingerprint",
    "embedder_id",
    "cache_key",
    "code_fingerprint",
    "fit_cached",
    "cached_text_vectors",
]

log = logging.getLogger("recsieve.evaluation")

#: Version of the entry layout (part of every key: a new layout never reads an old entry).
CACHE_FORMAT = 1
ENTRY = "ENTRY.json"
STATE = "state"
#: Temporary folders of writers that died are removed after this many seconds.
STALE_TMP_S = 24 * 3600.0
#: The parts of the package (relative to it) whose code decides what training produces.
TRAINING_CODE = ("training", "context", "engine", "rerankers", "indexes", "embedding.py", "vectors.py")
#: ... and what the text embedder produces.
EMBEDDING_CODE = ("embedding.py", "embedding_export.py", "vectors.py")
_PACKAGE = Path(__file__).resolve().parents[1]


@runtime_checkable
class CacheableScorer(Protocol):
    """A scorer whose trained state can be saved to a folder and loaded instead of training."""

    name: str

    def cache_settings(self) -> dict[str, Any] | None:
        """JSON-ready: everything besides the data and the split that its trained state depends
        on (hyperparameters, budgets, seeds, the embedder); ``None``: nothing to cache."""
        ...

    def save_fitted(self, folder: Path) -> None:
        """After ``fit``: write the trained state into the empty folder ``folder``."""
        ...

    def load_fitted(self, folder: Path, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        """Instead of ``fit``: be ready to score with the state in ``folder`` (read, never changed)."""
        ...


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/recsieve/evaluate``, else ``~/.cache/recsieve/evaluate``."""
    return user_cache_dir("evaluate")


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 of what the loader read from the data files: items (every field), texts, users,
    sequences, timestamps and kinds. Any change to the files that changes the data changes it."""
    h = hashlib.sha256()
    head = [dataset.name, [item.to_dict() for item in dataset.items], list(dataset.item_texts),
            list(dataset.user_ids)]
    h.update(json.dumps(head, sort_keys=True, default=str).encode("utf-8"))
    for seq in dataset.sequences:
        h.update(len(seq).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(seq, "<i8").tobytes())
    if dataset.timestamps is not None:
        for ts in dataset.timestamps:
            h.update(np.ascontiguousarray(ts, "<f8").tobytes())
    if dataset.kinds is not None:
        h.update(json.dumps([list(k) for k in dataset.kinds]).encode("utf-8"))
    return h.hexdigest()


def embedder_id(embedder: Any) -> str:
    """What names an embedder's vectors in a key: its ``model_id`` (a sentence-transformers model
    and backend), else its class and dimension. A :class:`CachedEmbedder`'s inner embedder's."""
    inner = getattr(embedder, "inner", embedder)
    model_id = getattr(inner, "model_id", None)
    if model_id:
        return str(model_id)
    return f"{type(inner).__module__}.{type(inner).__qualname__}(dim={inner.dim})"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of ``parts`` (with the cache format and the recsieve version) as canonical JSON."""
    full = {"cache_format": CACHE_FORMAT, "recsieve": __version__, **parts}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


@functools.cache
def code_fingerprint(*parts: str) -> str:
    """sha256 of the sources under ``parts``: package-relative folders or files
    (``"training"``, ``"embedding.py"``); by default :data:`TRAINING_CODE`."""
    h = hashlib.sha256()
    for part in parts or TRAINING_CODE:
        path = _PACKAGE / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for f in files:
            h.update(f.relative_to(_PACKAGE).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _module_file(module: str) -> str | None:
    """The package-relative file of a recsieve module (``recsieve.evaluation.sasrec``), else ``None``."""
    if not module.startswith("recsieve."):
        return None
    return "/".join(module.split(".")[1:]) + ".py"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "entry"


def _tree_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


class ModelCache:
    """Trained-model entries under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"ModelCache({str(self.root)!r})"

    def entry(self, key: str, label: str) -> Path:
        """The folder of the entry ``key`` (``label``: a readable prefix, e.g. dataset-system)."""
        return self.root / f"{_slug(label)}-{key[:24]}"

    def lookup(self, key: str, label: str) -> Path | None:
        """The ``state/`` folder of a whole entry ``key``, or ``None``. An entry that is there but
        does not check out is logged and removed."""
        folder = self.entry(key, label)
        if not folder.exists():
            return None
        problem = self._check(folder, key)
        if problem is None:
            return folder / STATE
        log.warning("recsieve evaluate: model cache entry %s is unusable (%s); training again", folder, problem)
        self.discard(key, label)
        return None

    def _check(self, folder: Path, key: str) -> str | None:
        try:
            meta = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"no {ENTRY}: half-written"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{ENTRY} unreadable: {exc}"
        if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("files"), dict):
            return f"{ENTRY} is not this entry's"
        state = folder / STATE
        if not state.is_dir():
            return f"no {STATE}/ folder"
        try:
            found = _tree_digests(state)
        except OSError as exc:
            return f"unreadable: {exc}"
        if found != meta["files"]:
            changed = sorted(set(found) ^ set(meta["files"]) | {n for n in found if meta["files"].get(n) != found[n]})
            return f"files missing, extra or changed: {', '.join(changed[:5])}"
        return None

    def discard(self, key: str, label: str) -> None:
        """Remove the entry ``key`` if it is there (moved aside first, so no reader sees half of it)."""
        folder = self.entry(key, label)
        if not folder.exists():
            return
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        try:
            folder.rename(trash)
        except OSError:
            trash = folder
        shutil.rmtree(trash, ignore_errors=True)

    def store(self, key: str, label: str, parts: dict[str, Any], write: Callable[[Path], None]) -> Path | None:
        """Make the entry ``key``: ``write(state_folder)`` into a temporary folder, checksum it,
        rename it into place. Returns the entry's ``state/``, or ``None`` (logged) when it could
        not be written; an entry another process completed first is kept."""
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep()
            tmp = self.root / f".tmp-{_slug(label)}-{uuid.uuid4().hex}"
            (tmp / STATE).mkdir(parents=True)
            write(tmp / STATE)
            meta = {"key": key, "parts": parts, "files": _tree_digests(tmp / STATE), "created": time.time(),
                    "cache_format": CACHE_FORMAT, "recsieve": __version__}
            with open(tmp / ENTRY, "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2, sort_keys=True, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            folder = self.entry(key, label)
            if folder.exists():
                if self._check(folder, key) is None:
                    return folder / STATE  # another run wrote it meanwhile
                self.discard(key, label)
            try:
                tmp.rename(folder)
            except OSError:
                if folder.exists() and self._check(folder, key) is None:
                    return folder / STATE  # another run renamed its copy into place first
                raise
            tmp = None
            fsync_dir(self.root)
            return folder / STATE
        except Exception as exc:  # a cache that cannot be written must not end the evaluation
            log.warning("recsieve evaluate: could not write model cache entry for %s under %s (%s: %s)",
                        label, self.root, type(exc).__name__, exc)
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove temporary folders of writers that died long ago."""
        now = time.time()
        for p in self.root.glob(".tmp-*"):
            try:
                if now - p.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def fit_cached(system: Any, train_sequences: Sequence[np.ndarray], n_items: int, cache: ModelCache | None,
               parts: dict[str, Any]) -> bool:
    """Fit ``system``, or load it from ``cache`` when it is a :class:`CacheableScorer` with
    settings and an entry for ``parts`` + its name and settings is there; store what it trained.
    Returns whether it came from the cache."""
    settings = system.cache_settings() if cache is not None and isinstance(system, CacheableScorer) else None
    if settings is None:
        system.fit(train_sequences, n_items)
        return False
    full = {**parts, "system": system.name, "settings": settings,
            "code": code_fingerprint(*TRAINING_CODE, *filter(None, [_module_file(type(system).__module__)]))}
    key = cache_key(full)
    label = f"{parts.get('dataset', 'data')}-{system.name}"
    state = cache.lookup(key, label)
    if state is not None:
        try:
            system.load_fitted(state, train_sequences, n_items)
            log.info("recsieve evaluate: %s loaded from the model cache (%s)", system.name, state.parent)
            return True
        except Exception as exc:  # whatever a damaged entry raises, train instead
            log.warning("recsieve evaluate: model cache entry %s failed to load (%s: %s); training again",
                        state.parent, type(exc).__name__, exc)
            cache.discard(key, label)
    system.fit(train_sequences, n_items)
    cache.store(key, label, full, system.save_fitted)
    return False


def cached_text_vectors(cache: ModelCache, embedder: Any, texts: Sequence[str], *,
                        show_progress: bool | None = None) -> tuple[np.ndarray, bool]:
    """``embedder.embed(texts)``, kept in ``cache`` under the embedder's id and the texts; returns
    the vectors and whether they came from the cache."""
    digest = hashlib.sha256(json.dumps(list(texts)).encode("utf-8")).hexdigest()
    parts = {"kind": "text-vectors", "embedder": embedder_id(embedder), "texts": digest,
             "code": code_fingerprint(*EMBEDDING_CODE)}
    key, label = cache_key(parts), "text-vectors"
    state = cache.lookup(key, label)
    if state is not None:
        try:
            vectors = np.load(state / "vectors.npy", allow_pickle=False)
            if vectors.shape[0] == len(texts):
                return vectors, True
            raise ValueError(f"{vectors.shape[0]} vectors for {len(texts)} texts")
        except Exception as exc:
            log.warning("recsieve evaluate: cached text vectors %s unusable (%s); embedding again", state.parent, exc)
            cache.discard(key, label)
    vectors = np.asarray(embedder.embed(list(texts), show_progress=show_progress), np.float32)
    cache.store(key, label, parts, lambda folder: np.save(folder / "vectors.npy", vectors))
    return vectors, False
