"""The context model at serving time: the behaviour index and the channel that queries it.

A model folder may hold a trained context model (``context/``, see :mod:`recsieve.context`):
an item tower that turns each item's text vector (plus an ID residual for items seen in
training) into a token, a context encoder that reads a user's last events as tokens (with
event kind, coarse age and an optional instruction) into a user vector, and a candidate
scorer — the fine sieve's cross-encoder — in which each candidate's token attends to every
context token but not to the other candidates.

:class:`ContextRuntime` serves one such model for one engine: it computes the tokens of every
catalog row, holds them in the **behaviour index** (FAISS or LanceDB, as the engine's config
says), and keeps both in step with the catalog (an :class:`~recsieve.engine.store.ItemListener`:
an upserted item is recallable at once, from text alone if it is new). :class:`ContextChannel`
is the recall channel that queries the behaviour index with the encoder's user vector; its
extra features (the encoder's score, the candidate scorer's score and the item co-occurrence
score of every candidate) are what the ranking head stacks.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsieve.engine.recall import RecallChannel, RecallRequest
from recsieve.engine.store import Store, new_index
from recsieve.types import Candidates

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.context.model import ContextModel
    from recsieve.indexes.base import VectorIndex

__all__ = ["CONTEXT_DIR", "ContextRuntime", "ContextChannel", "CONTEXT_FEATURES"]

#: Sub-folder of a model folder holding the context model.
CONTEXT_DIR = "context"
#: The context channel's extra features: the encoder's score, the candidate scorer's score and
#: the item co-occurrence score (:mod:`recsieve.context.cooccurrence`; 0 for a model without one).
CONTEXT_FEATURES = ("context_encoder", "context_cross", "context_cooccurrence")


class ContextRuntime:
    """A context model serving one engine: item tokens in the behaviour index, kept in step with
    the catalog, and the two scores the fine sieve reads. Build with :meth:`open` (the whole
    index is built before it serves)."""

    def __init__(self, model: ContextModel, store: Store, index: VectorIndex) -> None:
        self.model = model
        self.store = store
        self.index = index
        self._lock = threading.Lock()  # one token-table update at a time

    @classmethod
    def open(cls, folder: str | Path, store: Store) -> ContextRuntime:
        """Load the context model in ``folder`` and index the tokens of every live catalog row."""
        from recsieve.context.model import ContextModel

        model = ContextModel.load(folder)
        if model.settings.text_dim not in (0, store.dim):
            from recsieve.errors import StoreError

            raise StoreError(f"context model {folder} reads {model.settings.text_dim}-d text vectors, "
                             f"but this engine's are {store.dim}-d")
        n = store.catalog.num_rows
        model.set_items(store.vectors[:n])  # rows past the trained ones are cold: text alone
        runtime = cls(model, store, new_index(store.config, model.settings.dim))
        live = np.array([r for r in range(n) if store.catalog.is_live(r)], dtype=np.int64)
        runtime._index_rows(live)
        return runtime

    def fusion_weight(self, default: float) -> float:
        """The channel's reciprocal-rank fusion weight: the one chosen at training and saved with
        the model (``settings.extra["recall_weight"]``), else ``default`` (the engine config's)."""
        weight = self.model.settings.extra.get("recall_weight")
        return float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool) else default

    def _index_rows(self, rows: np.ndarray) -> None:
        if rows.size:
            tokens = self.model.item_vectors()[rows]
            self.index.upsert(rows, tokens, [dict(self.store.catalog.metadata(int(r))) for r in rows])

    # -- ItemListener ------------------------------------------------------------------

    def items_upserted(self, rows: np.ndarray, text_vectors: np.ndarray) -> None:
        with self._lock:
            self.model.update_items(rows, text_vectors)
            self._index_rows(np.asarray(rows, np.int64))

    def items_removed(self, rows: np.ndarray) -> None:
        self.index.remove(rows)

    # -- scores ------------------------------------------------------------------------

    def _context(self, request: RecallRequest) -> tuple[np.ndarray, list[str] | None, np.ndarray | None]:
        """The rows the encoder reads (positive events, the last ``max_len``), with their kinds
        and times when the model was trained to read them (``settings.extra["reads"]``); made
        once per request (the user vector, the scorer and co-occurrence all read them)."""
        key = ("context", id(self))
        if key not in request.memo:
            events = [e for e in request.history if e.weight > 0][-self.model.settings.max_len:]
            rows = np.array([e.row for e in events], dtype=np.int64)
            reads = self.model.settings.extra.get("reads", ())
            kinds = [e.kind for e in events] if "kinds" in reads else None
            ts = np.array([e.ts for e in events], dtype=np.float64) if "ages" in reads else None
            request.memo[key] = (rows, kinds, ts)
        return request.memo[key]

    def user_vector(self, request: RecallRequest) -> np.ndarray | None:
        """The encoder's user vector for the request (``None`` with no history and no instruction)."""
        rows, kinds, ts = self._context(request)
        if not rows.size and request.instruction is None:
            return None
        instruction = self._instruction(request)
        return self.model.encode([rows], kinds=None if kinds is None else [kinds],
                                 timestamps=None if ts is None else [ts], request_times=[self._now(request)],
                                 instructions=None if instruction is None else instruction[None])[0]

    def cross_scores(self, request: RecallRequest, candidates: np.ndarray) -> np.ndarray:
        """The candidate scorer's score of each candidate (zeros when the model has none)."""
        if self.model.scorer is None or not len(candidates):
            return np.zeros(len(candidates), np.float32)
        rows, kinds, ts = self._context(request)
        return self.model.score_candidates(rows, np.asarray(candidates, np.int64), kinds=kinds, timestamps=ts,
                                           request_time=self._now(request), instruction=self._instruction(request))

    def cooccurrence_scores(self, request: RecallRequest, candidates: np.ndarray) -> np.ndarray:
        """Each candidate's co-occurrence score with the request's context (zeros when the
        model has no co-occurrence counts)."""
        counts = self.model.cooccurrence
        if counts is None or not len(candidates):
            return np.zeros(len(candidates), np.float32)
        return counts.scores(self._context(request)[0], np.asarray(candidates, np.int64))

    def _instruction(self, request: RecallRequest) -> np.ndarray | None:
        if request.instruction is None or not self.model.settings.instruction_dim:
            return None
        return np.asarray(request.instruction, np.float32)

    @staticmethod
    def _now(request: RecallRequest) -> float:
        return time.time() if request.now is None else request.now


class ContextChannel(RecallChannel):
    """Recall from the behaviour index with the context encoder's user vector; its extra
    features are the encoder's, the candidate scorer's and the co-occurrence scores of every
    fused candidate."""

    name = "context"
    extra_features = CONTEXT_FEATURES

    def __init__(self, runtime: ContextRuntime) -> None:
        self.runtime = runtime

    def recall(self, request: RecallRequest) -> Candidates:
        user = self._user(request)
        if user is None or len(self.runtime.index) == 0:
            return Candidates(np.empty(0, np.int64), np.empty(0, np.float32))
        exclude = np.fromiter(request.exclude, dtype=np.int64, count=len(request.exclude))
        scores, ids = self.runtime.index.search(user.reshape(1, -1), request.n, filter=request.filter,
                                                exclude=exclude)
        keep = ids[0] >= 0
        rows, sc = ids[0][keep], scores[0][keep]
        ok = np.fromiter((request.accept(int(r)) for r in rows), dtype=bool, count=rows.size)
        return Candidates(np.ascontiguousarray(rows[ok]), np.ascontiguousarray(sc[ok], dtype=np.float32))

    def features(self, request: RecallRequest, rows: np.ndarray) -> np.ndarray:
        user = self._user(request)
        out = np.zeros((len(rows), len(CONTEXT_FEATURES)), np.float32)
        if user is not None and len(rows):
            out[:, 0] = self.runtime.model.item_vectors_of(rows) @ user
            out[:, 1] = self.runtime.cross_scores(request, rows)
        out[:, 2] = self.runtime.cooccurrence_scores(request, rows)
        return out

    def _user(self, request: RecallRequest) -> np.ndarray | None:
        """The user vector, computed once per request (recall and features read the same one)."""
        if "context_user" not in request.memo:
            request.memo["context_user"] = self.runtime.user_vector(request)
        return request.memo["context_user"]
