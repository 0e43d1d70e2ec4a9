"""The model slot: which trained models order candidates, loaded whole and switched atomically.

A model folder (written by ``recsieve train-reranker`` or ``learn()``) holds a ranking head
(``ranker.json``) and, optionally, a cross-encoder sub-folder; a folder holding only a
cross-encoder is served as a bare re-ranker. What serves is one immutable
:class:`ServingModel` (head, cross-encoder, the settings they serve with, a version that
names them); a switch loads the new one completely before it replaces the old, so a request
reads a consistent pair and a model that fails to load leaves the old one serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from recsieve.engine.config import CONFIG_FILE, EngineConfig
from recsieve.engine.ranker import RANKER_FILE, RankingHead
from recsieve.errors import StoreError
from recsieve.storage import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.rerankers.base import Reranker

__all__ = ["ServingModel", "ModelSlot", "model_version"]


@dataclass(frozen=True)
class ServingModel:
    """What orders candidates now: the ranking head and the cross-encoder the ordering reads
    (``None`` when it reads none), the engine settings they serve with, and their version."""

    head: RankingHead | None
    reranker: Reranker | None
    config: EngineConfig
    version: str


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

    ``feature_names``: the engine's feature layout, which a head must have been trained on.
    ``given``: a re-ranker passed when the engine was opened, served in place of a folder's own.
    """

    def __init__(self, directory: Path, config: EngineConfig, feature_names: Callable[[], tuple[str, ...]],
                 given: Reranker | None = None) -> None:
        self.directory = directory
        self._config = config
        self._feature_names = feature_names
        self._given = given
        self._current: ServingModel | None = None
        self._lock = threading.Lock()

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
            with self._lock:
                if self._current is None:
                    self._current = self._build(self._config, self._given)
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
        new = self._build(config, reranker or self._given)
        with self._lock:
            if persist:
                atomic_write_text(self.directory / CONFIG_FILE, config.to_toml())
            self._current = new
        return new

    def _build(self, config: EngineConfig, given: Reranker | None) -> ServingModel:
        head, own = self._load(config)
        chosen = _reads_cross_encoder(config, head, given or own)
        version = model_version(config, head)
        if chosen is not None and chosen is not own:
            version += f":{chosen.model_id}"
        return ServingModel(head, chosen, config, version)

    def _load(self, config: EngineConfig) -> tuple[RankingHead | None, Reranker | None]:
        """The ranking head and cross-encoder of the folder ``config`` names."""
        path = self.folder(config)
        if path is None:
            return None, None
        from recsieve.rerankers.factory import open_cross_encoder

        def cross_encoder(folder: Path) -> Reranker:
            return open_cross_encoder(folder, backend=config.ce_backend, max_length=config.ce_max_length or None)

        if not (path / RANKER_FILE).exists():
            return None, cross_encoder(path)
        head = RankingHead.load(path)
        expected = self._feature_names()
        if head.features != expected:
            raise StoreError(
                f"reranker_model {config.reranker_model!r} was trained on features {head.features}, "
                f"but this engine's channels give {expected}; retrain it or restore the channels"
            )
        return head, cross_encoder(path / head.cross_encoder) if head.cross_encoder else None
