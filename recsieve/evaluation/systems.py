"""recsieve's own systems as evaluation scorers: zero-shot text recall and the engine itself.

:class:`TextZeroShot` ranks all items by cosine similarity between item embeddings and a
recency-weighted mean of the user's last items' embeddings (no training at all).
:class:`EngineSystem` builds a real :class:`~recsieve.engine.engine.Engine` in a temporary
directory, records the training sequences as events, and ranks with the engine's recall
(``rerank=False``: "recsieve recall only") or recall + re-ranker ("recsieve"). Items outside
the recalled candidates score ``-inf`` (counted as ties below every candidate).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.embedding import Embedder, SentenceTransformerEmbedder
from recsieve.engine.config import EngineConfig
from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.model_cache import embedder_id
from recsieve.rerankers.base import Reranker
from recsieve.types import Event
from recsieve.vectors import normalize

__all__ = ["TextZeroShot", "EngineSystem", "EngineVariant", "CachedEmbedder", "STEP_SECONDS"]

#: Cross-encoder training in evaluation: a seeded sample of users, targets per user (about
#: 380 steps of 16 pairs: 6-7 minutes on 2 idle cores).
CE_USERS, CE_STEPS = 300, 2

#: Sequences without timestamps get one event per minute (oldest first).
STEP_SECONDS = 60.0


class TextZeroShot:
    """Zero-shot text-embedding ranking: item embeddings vs the user's recent items' mean."""

    def __init__(self, dataset: Dataset, embedder: Embedder, *, window: int = 10, decay: float = 0.8,
                 name: str = "text-zero-shot") -> None:
        self.dataset, self.embedder, self.window, self.decay, self.name = dataset, embedder, window, decay, name
        self._vectors: np.ndarray | None = None

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        if n_items != self.dataset.n_items:
            raise InvalidInputError("n_items", n_items, f"expected {self.dataset.n_items}")
        if self._vectors is None:
            self._vectors = self.embedder.embed(list(self.dataset.item_texts))

    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        assert self._vectors is not None, "fit first"
        queries = np.zeros((len(contexts), self._vectors.shape[1]), np.float32)
        for i, ctx in enumerate(contexts):
            last = np.asarray(ctx[-self.window:], np.int64)
            w = self.decay ** np.arange(len(last))[::-1]
            queries[i] = (w[:, None] * self._vectors[last]).sum(0)
        if not len(contexts):
            return np.zeros((0, self._vectors.shape[0]), np.float32)
        return normalize(queries) @ self._vectors.T


class EngineSystem:
    """The recsieve engine as a scorer (recall only, or recall + re-ranker).

    ``train_ranker=True`` trains the engine's re-ranker on the training part after recording it
    (:func:`~recsieve.training.train_engine_ranker`; with ``cross_encoder=True`` a
    cross-encoder too, on ``ce_users`` users) and serves it in ``tier``; its report lands in
    ``train_report``.

    A trained one is a :class:`~recsieve.evaluation.model_cache.CacheableScorer`: its model
    folder(s) and report are what is cached; loading rebuilds the engine (catalog, events) and
    serves the cached folder without training. ``from_cache`` says whether the last fit loaded.
    """

    def __init__(self, dataset: Dataset, *, name: str = "recsieve", config: EngineConfig | None = None,
                 embedder: Embedder | None = None, reranker: Reranker | None = None, rerank: bool = True,
                 train_ranker: bool = False, cross_encoder: bool = False, tier: str = "full",
                 ranker_users: int | None = None, ranker_steps: int = 3, ce_users: int = CE_USERS,
                 context: bool = False, context_budget_s: float | None = 1200.0, ablation: bool = False,
                 refit_ablation: bool = False, progress: bool = True) -> None:
        if rerank and reranker is None and not (train_ranker or context) and not (config and config.reranker_model):
            raise InvalidInputError("reranker", None, f"{name}: re-ranking needs a trained re-ranker")
        self.dataset, self.name, self.rerank, self.progress = dataset, name, rerank, progress
        self.train_ranker, self.cross_encoder, self.tier = train_ranker, cross_encoder, tier
        self.ranker_users, self.ranker_steps, self.ce_users = ranker_users, ranker_steps, ce_users
        self.context, self.context_budget_s, self.ablation = context, context_budget_s, ablation
        #: with ``ablation``: the same engine and context model, its head trained without the
        #: candidate scorer's feature (see :class:`EngineVariant`)
        self.ablated_model: Path | None = None
        #: with ``refit_ablation``: the same head with the encoder before its refit
        self.refit_ablation = refit_ablation
        self.before_refit_model: Path | None = None
        self.model: Path | None = None
        self.train_report: dict | None = None
        self.config = config or EngineConfig(index="flat", cache="none", refresh_threads=0)
        self.embedder = embedder or SentenceTransformerEmbedder(self.config.embedding_model)
        self.reranker = reranker
        self.engine: Engine | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._rows: np.ndarray | None = None
        #: the last :meth:`score` call's contexts, serving model and candidates (for :meth:`candidates`)
        self._recalled: tuple[Sequence[np.ndarray], str, list[np.ndarray]] | None = None
        self.from_cache = False

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        self._build(train_sequences, n_items)
        if self.context:
            self._train_context()
        elif self.train_ranker:
            self._train_ranker()

    def _build(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        """A fresh engine in a temporary folder: the dataset's items, the training sequences as events."""
        if n_items != self.dataset.n_items:
            raise InvalidInputError("n_items", n_items, f"expected {self.dataset.n_items}")
        self.close()
        self._tmp = tempfile.TemporaryDirectory(prefix="recsieve-eval-")
        self.engine = Engine.create(Path(self._tmp.name) / "engine", self.config, embedder=self.embedder,
                                    reranker=self.reranker)
        self.engine.upsert_items(list(self.dataset.items), show_progress=self.progress)
        self._rows = self.engine.catalog.rows(list(self.dataset.item_ids))
        item_ids = self.dataset.item_ids
        events: list[Event] = []
        for u, seq in enumerate(tqdm(train_sequences, desc=f"{self.name}: events", unit="user",
                                     disable=not self.progress, leave=False)):
            events.extend(Event(f"u{u}", item_ids[i], "click", ts=t * STEP_SECONDS) for t, i in enumerate(seq.tolist()))
            if len(events) >= 50_000:
                self.engine.record(events)
                events = []
        self.engine.record(events)
        self.from_cache = False

    def _train_ranker(self) -> None:
        from recsieve.training import train_engine_ranker

        model = Path(self._tmp.name) / "model"
        ce = None
        if self.cross_encoder:
            from functools import partial

            from recsieve.training import train_engine_reranker

            ce = partial(train_engine_reranker, self.engine, users=self.ce_users, steps_per_user=CE_STEPS, lr=3e-4,
                         progress=self.progress)
        self.train_report = train_engine_ranker(self.engine, model, users=self.ranker_users,
                                                steps_per_user=self.ranker_steps,
                                                train_cross_encoder=ce, progress=self.progress)
        self.engine.use_model(model, tier=self.tier)
        self.model = model

    def _train_context(self) -> None:
        from recsieve.training import train_engine

        self.model = Path(self._tmp.name) / "model"
        if self.ablation:  # the same encoder and examples, the head without the candidate scorer's score
            self.ablated_model = Path(self._tmp.name) / "model-without-cross-encoder"
        if self.refit_ablation:  # the same head, the encoder before its refit
            self.before_refit_model = Path(self._tmp.name) / "model-without-refit"
        self.train_report = train_engine(self.engine, self.model, users=self.ranker_users,
                                         steps_per_user=self.ranker_steps, budget_s=self.context_budget_s,
                                         ablation_out=self.ablated_model,
                                         refit_ablation_out=self.before_refit_model, progress=self.progress)

    # -- the model cache (recsieve.evaluation.model_cache.CacheableScorer) -----------------

    def cache_settings(self) -> dict[str, Any] | None:
        """What the trained model depends on besides the data and the split; ``None`` when nothing
        is trained (recall only) or a re-ranker object was given (it cannot be named in a key)."""
        if not (self.context or self.train_ranker) or self.reranker is not None:
            return None
        return {"kind": "engine", "config": asdict(self.config), "embedder": embedder_id(self.embedder),
                "rerank": self.rerank, "context": self.context, "context_budget_s": self.context_budget_s,
                "ablation": self.ablation, "refit_ablation": self.refit_ablation,
                "train_ranker": self.train_ranker, "cross_encoder": self.cross_encoder,
                "tier": self.tier, "ranker_users": self.ranker_users, "ranker_steps": self.ranker_steps,
                "ce_users": self.ce_users, "ce_steps": CE_STEPS, "step_seconds": STEP_SECONDS}

    def save_fitted(self, folder: Path) -> None:
        """The model folder (``model/``), the ablations' (``ablation/``, ``before-refit/``), the
        training report."""
        assert self.model is not None, "fit first"
        shutil.copytree(self.model, folder / "model")
        if self.ablated_model is not None:
            shutil.copytree(self.ablated_model, folder / "ablation")
        if self.before_refit_model is not None:
            shutil.copytree(self.before_refit_model, folder / "before-refit")
        (folder / "train_report.json").write_text(json.dumps(self.train_report, default=str), encoding="utf-8")

    def load_fitted(self, folder: Path, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        """Build the engine as ``fit`` does, then serve a copy of the cached model folder."""
        self._build(train_sequences, n_items)
        try:
            work = Path(self._tmp.name)
            self.model = Path(shutil.copytree(folder / "model", work / "model"))
            if self.ablation:
                self.ablated_model = Path(shutil.copytree(folder / "ablation", work / "model-without-cross-encoder"))
            if self.refit_ablation:
                self.before_refit_model = Path(shutil.copytree(folder / "before-refit", work / "model-without-refit"))
            self.train_report = json.loads((folder / "train_report.json").read_text(encoding="utf-8"))
            if isinstance(self.train_report, dict) and "model" in self.train_report:
                self.train_report["model"] = str(self.model)
            self.engine.use_model(self.model, tier=None if self.context else self.tier)
        except BaseException:
            self.close()
            raise
        self.from_cache = True

    def view(self, ctx: np.ndarray):
        """The engine's view of a user whose history is ``ctx`` (dataset item indices, oldest first)."""
        rows = self._rows[np.asarray(ctx, np.int64)]
        return self.engine.history_view(rows, times=np.arange(len(rows)) * STEP_SECONDS)

    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        """Every item's rank position in the engine's answer (``-inf`` outside its candidates).

        The engine ranks all the ``recall_n`` candidates it recalls (its serving settings'), so
        the call also keeps them: :meth:`candidates` for the same ``contexts`` object, the same
        ``n`` and the same serving model returns them instead of recalling a second time."""
        assert self.engine is not None and self._rows is not None, "fit first"
        index_of = self._index_of()
        out = np.full((len(contexts), self.dataset.n_items), -np.inf, np.float32)
        recalled = []
        for i, ctx in enumerate(contexts):
            rows, _ = self.engine.rank(self.view(ctx), rerank=self.rerank)
            # Rank positions, not raw scores: candidates stay above -inf, order preserved, no accidental ties.
            out[i, index_of[rows]] = np.arange(len(rows), 0, -1, dtype=np.float32)
            recalled.append(index_of[rows])
        self._recalled = (contexts, self.engine.model_version, recalled)
        return out

    def candidates(self, contexts: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
        """The item indices recall finds for each context (in ranked order when :meth:`score` just
        ranked the same ``contexts`` with ``n`` candidates; in recall order otherwise)."""
        assert self.engine is not None and self._rows is not None, "fit first"
        if self._recalled is not None:
            last, version, recalled = self._recalled
            if last is contexts and version == self.engine.model_version and n == self.engine.config.recall_n:
                return recalled
        index_of = self._index_of()
        return [index_of[self.engine.recall_view(self.view(ctx), n).rows] for ctx in contexts]

    def _index_of(self) -> np.ndarray:
        """Catalog row -> dataset item index."""
        index_of = np.empty(self.engine.catalog.num_rows, np.int64)
        index_of[self._rows] = np.arange(len(self._rows))
        return index_of

    def close(self) -> None:
        """Close the engine and delete its temporary directory."""
        self._recalled = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class EngineVariant:
    """Another model served by a fitted :class:`EngineSystem`'s engine (e.g. its ablation):
    ``fit`` does nothing (list it after its base), ``score`` serves ``folder`` for the call."""

    def __init__(self, base: EngineSystem, name: str, folder: Callable[[], Path | None]) -> None:
        self.base, self.name, self.folder = base, name, folder

    @property
    def from_cache(self) -> bool:
        """Whether its base's model (and so this one) came from the model cache."""
        return self.base.from_cache

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        if self.base.engine is None or self.folder() is None:
            raise InvalidInputError("systems", self.name, f"list it after {self.base.name}, which trains its model")

    def _serving(self, call: Callable[[], Any]) -> Any:
        engine = self.base.engine
        engine.use_model(self.folder())
        try:
            return call()
        finally:
            engine.use_model(self.base.model)

    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        return self._serving(lambda: self.base.score(contexts))

    def candidates(self, contexts: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
        return self._serving(lambda: self.base.candidates(contexts, n))


class CachedEmbedder:
    """An :class:`Embedder` that remembers texts it embedded (systems of one run share item texts)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def backend(self) -> str | None:
        """The inner embedder's backend (``None`` when it does not say), so an engine can refuse
        vectors of another backend than its index's (:func:`~recsieve.embedding.check_backend`)."""
        return getattr(self.inner, "backend", None)

    @property
    def model_id(self) -> str:
        """The inner embedder's id (see :func:`~recsieve.evaluation.model_cache.embedder_id`)."""
        return embedder_id(self.inner)

    def preload(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Remember ``vectors`` (aligned with ``texts``) as these texts' embeddings."""
        if len(texts) != len(vectors):
            raise InvalidInputError("vectors", len(vectors), f"expected one per text ({len(texts)})")
        for t, v in zip(texts, np.asarray(vectors, np.float32)):
            self._cache[t] = v

    def embed(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, v in zip(todo, self.inner.embed(todo, show_progress=show_progress)):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[t] for t in texts])
