"""The model slot: which trained models order candidates, loaded whole and switched atomically.

A model folder (written by ``recsieve train``, ``train-reranker`` or ``learn()``) holds a
ranking head (``ranker.json``) and, optionally, a context model (``context/``: item tower,
context encoder, candidate scorer; see :mod:`recsieve.engine.context`) and a word-level
cross-encoder sub-folder; a folder holding only a cross-encoder is served as a bare re-ranker.
What serves is one immutable :class:`ServingModel` (head, context model with its behaviour
index, cross-encoder, the settings they serve with, a version that names them); a switch
loads the new one completely — its behaviour index built — before it replaces the old, so a
request reads a consistent set and a model that fails to load leaves the old one serving.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from recsieve.engine.config import CONFIG_FILE, EngineConfig
from recsieve.engine.context import CONTEXT_DIR, ContextRuntime
from recsieve.engine.ranker import RANKER_FILE, RankingHead
from recsieve.engine.store import LOCK_FILE, Store
from recsieve.errors import RecsieveError, StoreError
from recsieve.locks import FileLock
from recsieve.storage import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.rerankers.base import Reranker

__all__ = ["ServingModel", "ModelSlot", "model_version"]


@dataclass(frozen=True)
class ServingModel:
    """What orders candidates now: the ranking head and the cross-encoder the ordering reads
    (``None`` when it reads none), the engine settings they serve with, their version, and the
    context model with its behaviour index (``None`` when the folder has none)."""

    head: RankingHead | None
    reranker: Reranker | None
    config: EngineConfig
    version: str
    context: ContextRuntime | None = None


def model_version(config: EngineConfig, head: RankingHead | None) -> str:
    """Names the model serving (keys of cached results and scores carry it)."""
    if not config.reranker_model:
        return "recall-only"
    stamp = head.report.get("trained_at", "") if head is not None else ""
    return f"{config.reranker_model}:{config.rerank_tier}:{config.ce_backend}:{config.ce_max_length}:{stamp}"


def _reads_cross_encoder(config: EngineConfig, head: RankingHead | None, reranker: Reranker | None) -> Reranker | None:
    """``reranker`` where the ordering reads one: always without a ranking head; with a head, in
    the ``full`` tier when the head's fitted blend weight is positive."""
    if head is not None and (config.rerank_tier != "full" or head.blend <= 0):
        return None
    return reranker


class ModelSlot:
    """Holds the :class:`ServingModel`; loads it lazily on first use and switches it atomically.

    ``feature_names(context)``: the engine's feature layout (with a context model's features or
    without), which a head must have been trained on. ``given``: a re-ranker passed when the
    engine was opened, served in place of a folder's own. A context model's behaviour index is
    built from ``store`` and kept in step with it (it joins the store's item listeners when it
    starts serving and leaves when it stops).
    """

    def __init__(self, directory: Path, config: EngineConfig, feature_names: Callable[[bool], tuple[str, ...]],
                 store: Store, given: Reranker | None = None) -> None:
        self.directory = directory
        self._store = store
        self._config = config
        self._feature_names = feature_names
        self._given = given
        self._current: ServingModel | None = None
        self._lock = threading.Lock()
        self._config_file = os.fspath(directory / CONFIG_FILE)
        self._seen = _file_signature(self._config_file)  # the config file as this process last read it
        self._sync_lock = threading.Lock()

    def folder(self, config: EngineConfig | None = None) -> Path | None:
        """The model folder ``config`` (default: the serving one) names, absolute, or ``None``."""
        config = config or self.config
        if not config.reranker_model:
            return None
        path = Path(config.reranker_model)
        return path if path.is_absolute() else self.directory / path

    @property
    def config(self) -> EngineConfig:
        """The engine settings the serving model serves with (without loading it)."""
        return self._current.config if self._current is not None else self._config

    @property
    def version(self) -> str:
        """The serving model's version (without loading it)."""
        if self._current is not None:
            return self._current.version
        return model_version(self._config, None)

    def current(self) -> ServingModel:
        """The serving model (loaded on first use)."""
        current = self._current
        if current is None:
            with self._store.write_lock, self._lock:  # no catalog change while a behaviour index is built
                if self._current is None:
                    self._serve(self._build(self._config, self._given))
                current = self._current
        return current

    def switch(self, path: str | Path | None, *, tier: str | None = None, persist: bool = False,
               reranker: Reranker | None = None) -> ServingModel:
        """Serve the model folder ``path`` (``None``: recall-only) in ``tier`` from now on.

        ``persist=True`` also rewrites the directory's config file (atomically) to name it.
        """
        base = self.config
        config = replace(base, reranker_model="" if path is None else str(path),
                         rerank_tier=base.rerank_tier if tier is None else tier)
        with self._store.write_lock:  # no catalog change while a behaviour index is built
            new = self._build(config, reranker or self._given)
            with self._lock:
                if persist:
                    with FileLock(self.directory / LOCK_FILE).exclusive():  # one switch (or snapshot) at a time, across processes
                        atomic_write_text(self.directory / CONFIG_FILE, config.to_toml())
                        self._seen = _file_signature(self._config_file)
                self._serve(new)
        return new

    def sync(self) -> bool:
        """Serve the model another process switched to (its ``use_model(persist=True)`` rewrote the
        directory's config file): one ``stat`` when the file has not changed. The thread that
        notices loads the model while other threads keep serving the old one; a model that fails
        to load leaves the old one serving (logged). Returns whether the serving model changed."""
        path = self._config_file
        if _file_signature(path) == self._seen or not self._sync_lock.acquire(blocking=False):
            return False
        try:
            seen = _file_signature(path)
            if seen == self._seen:
                return False
            self._seen = seen
            try:
                saved = EngineConfig.load(path)
            except (RecsieveError, OSError) as exc:
                logging.getLogger("recsieve").warning("recsieve: %s changed but cannot be read (%s); the model "
                                                      "serving now keeps serving", path, exc)
                return False
            serving = self.config
            if not saved.reranker_model and not serving.reranker_model and saved.rerank_tier == serving.rerank_tier:
                return False
            try:
                self.switch(saved.reranker_model or None, tier=saved.rerank_tier)
            except Exception as exc:  # noqa: BLE001 - whatever the load raised, the old model keeps serving
                logging.getLogger("recsieve").error("recsieve: the model %r another process switched to failed to "
                                                    "load (%s); the old model keeps serving", saved.reranker_model, exc)
                return False
            return True
        finally:
            self._sync_lock.release()

    def load(self, path: str | Path, *, tier: str | None = None) -> ServingModel:
        """The model in folder ``path``, loaded whole but not serving (training reads its recall
        and features before it is switched to). Its behaviour index does not follow the catalog."""
        base = self.config
        config = replace(base, reranker_model=str(path), rerank_tier=base.rerank_tier if tier is None else tier)
        with self._store.write_lock:
            return self._build(config, None)

    def _serve(self, new: ServingModel) -> None:
        """Make ``new`` the serving model; its behaviour index follows the catalog from now on."""
        old = self._current
        listeners = self._store.listeners
        if old is not None and old.context is not None and old.context in listeners:
            listeners.remove(old.context)
        if new.context is not None:
            listeners.append(new.context)
        self._current = new
        if old is not None and old.context is not None and (new.context is None or new.context.index is not old.context.index):
            old.context.index.close()  # background work stops; a request still reading it can finish

    def close(self) -> None:
        """Stop the serving behaviour index's background work (the engine is closing)."""
        current = self._current
        if current is not None and current.context is not None:
            current.context.index.close()

    def _build(self, config: EngineConfig, given: Reranker | None) -> ServingModel:
        path = self.folder(config)
        context = None
        if path is not None and (path / CONTEXT_DIR).exists():
            context = ContextRuntime.open(path / CONTEXT_DIR, self._store)
        head, own = self._load(config, context is not None)
        chosen = _reads_cross_encoder(config, head, given or own)
        version = model_version(config, head)
        if chosen is not None and chosen is not own:
            version += f":{chosen.model_id}"
        return ServingModel(head, chosen, config, version, context)

    def _load(self, config: EngineConfig, context: bool) -> tuple[RankingHead | None, Reranker | None]:
        """The ranking head and cross-encoder of the folder ``config`` names (``context``: whether
        it holds a context model, whose features the head must then have been trained on)."""
        path = self.folder(config)
        if path is None:
            return None, None
        from recsieve.rerankers.factory import open_cross_encoder

        def cross_encoder(folder: Path) -> Reranker:
            return open_cross_encoder(folder, backend=config.ce_backend, max_length=config.ce_max_length or None)

        if not (path / RANKER_FILE).exists():
            return None, None if context else cross_encoder(path)
        head = RankingHead.load(path)
        expected = self._feature_names(context)
        if head.features != expected and set(head.features) <= set(expected):
            head = head.with_features(expected)  # trained before some feature existed: weight 0 for it
        if head.features != expected:
            raise StoreError(
                f"reranker_model {config.reranker_model!r} was trained on features {head.features}, "
                f"but this engine's channels give {expected}; retrain it or restore the channels"
            )
        return head, cross_encoder(path / head.cross_encoder) if head.cross_encoder else None


def _file_signature(path: str) -> tuple[int, int, int] | None:
    """(modification time in ns, size, inode) of ``path``, ``None`` when absent: an atomic
    rewrite (a new file renamed into place) always changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
