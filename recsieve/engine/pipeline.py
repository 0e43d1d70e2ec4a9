"""The request pipeline: query → recall → order → explain, for one user view.

Recall fuses the channels' candidate lists (:mod:`recsieve.engine.recall`); the ordering
reads the serving model (:mod:`recsieve.engine.models`): a ranking head over recall's
features, blended with a cross-encoder's score by :func:`~recsieve.engine.ranker.blend_scores`
(the same function training fits the weight through), or a bare cross-encoder, or recall
order. A request's stated constraints (:mod:`recsieve.engine.constraints`) narrow both:
:meth:`Pipeline.ranked` recalls under its price/year filter and within its named categories,
filling up from outside them only when too few match. Everything here reads state; nothing
writes it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recsieve.engine.cache import ScoreCache
from recsieve.engine.constraints import CategoryVocabulary, Constraints, both, parse_instruction
from recsieve.engine.context import ContextChannel
from recsieve.engine.models import ModelSlot, ServingModel
from recsieve.engine.ranker import RankingHead, blend_scores, candidate_features, feature_names
from recsieve.engine.recall import PopularityChannel, RecallChannel, RecallRequest, fuse
from recsieve.engine.store import Store
from recsieve.engine.users import UserView
from recsieve.errors import InvalidInputError, UnknownItemError
from recsieve.filters import Filter
from recsieve.types import Candidates, Recommendation
from recsieve.vectors import normalize

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.engine.config import EngineConfig
    from recsieve.rerankers.base import Reranker

__all__ = ["Pipeline", "Recalled", "MAX_INSTRUCTION", "query_vector"]

log = logging.getLogger("recsieve")

#: Longest instruction accepted, in characters.
MAX_INSTRUCTION = 2_000

_PAST = {"view": "viewed", "click": "clicked", "cart": "added to cart", "purchase": "bought", "rating": "rated"}


@dataclass(frozen=True)
class Recalled:
    """What recall produced for one request: the fused candidates, each channel's own list,
    the channels that made them, and the instruction's embedding (if any)."""

    cands: Candidates
    lists: list[Candidates]
    channels: Sequence[RecallChannel]
    instruction: np.ndarray | None
    request: RecallRequest


def promote(fresh: np.ndarray, slots: int, position: int) -> np.ndarray:
    """The permutation of a ranked list (best first) that moves its first ``slots`` ``fresh``
    entries (items without behaviour) up to positions ``position``, ``position + 1``, ... where
    they rank lower; an entry already above its slot stays, and the others keep their order.

    Exploration for new items: a head trained on the log has rarely seen an item without
    behaviour be the answer, so it ranks every such item below the warm ones; a slot gives the
    best of them (by the head's own order) a place in the answer."""
    picked = np.flatnonzero(fresh)[:slots].tolist()
    moved = set(picked)
    out = [i for i in range(len(fresh)) if i not in moved]
    for j, i in enumerate(picked):
        out.insert(min(i, position + j), i)
    return np.asarray(out, np.int64)


def query_vector(cfg: EngineConfig, vectors: np.ndarray, profile: np.ndarray | None, rows: Sequence[int],
                 weights: Sequence[float], instruction: np.ndarray | None) -> np.ndarray | None:
    """The vector channel's query (the one rule, for serving and for training's batched examples):
    ``profile_weight`` × the unit long-term profile + ``recent_weight`` × the unit weighted sum of the
    recent ``rows``' vectors + ``instruction_weight`` × the instruction's vector, normalised;
    ``None`` when it is zero."""
    dim = vectors.shape[1]
    q = np.zeros(dim, dtype=np.float64)
    if profile is not None:
        q += cfg.profile_weight * profile / np.linalg.norm(profile)
    if len(rows):
        short = sum(w * vectors[r].astype(np.float64) for r, w in zip(rows, weights))
        norm = np.linalg.norm(short)
        if norm > 1e-9:
            q += cfg.recent_weight * short / norm
    if instruction is not None:
        q += cfg.instruction_weight * instruction
    if np.linalg.norm(q) < 1e-9:
        return None
    return normalize(q, dim, "query")[0]


class Pipeline:
    """Recall and ordering over a :class:`~recsieve.engine.store.Store` with the models of a
    :class:`~recsieve.engine.models.ModelSlot`. ``embed``: the text embedder (called lazily)."""

    def __init__(self, store: Store, models: ModelSlot, embed: Callable[[list[str]], np.ndarray],
                 score_cache: ScoreCache) -> None:
        self.store = store
        self.models = models
        self._embed = embed
        self.scores = score_cache
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self._reranker_missing_logged = False
        # the catalog's category vocabulary and parsed requests, for one catalog state at a time
        self._parse_lock = threading.Lock()
        self._parse_state: tuple[object, int] | None = None
        self._vocab: CategoryVocabulary | None = None
        self._parsed: OrderedDict[str, Constraints] = OrderedDict()

    # -- query ---------------------------------------------------------------------------

    def embed_text(self, text: str, field: str = "text") -> np.ndarray:
        """Embed one query text (cached), validated: non-empty and at most 2,000 characters."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(field, text, "must be a non-empty string")
        if len(text) > MAX_INSTRUCTION:
            raise InvalidInputError(field, text[:40], f"longer than {MAX_INSTRUCTION} characters")
        key = " ".join(text.split())
        vec = self._texts.get(key)
        if vec is None:
            vec = self._embed([key])[0]
            self._texts[key] = vec
            while len(self._texts) > 1024:
                self._texts.popitem(last=False)
        return vec

    def constraints(self, instruction: str | None) -> Constraints:
        """What ``instruction`` asks for on this catalog (:func:`~recsieve.engine.constraints.parse_instruction`
        over the store's field kinds and the catalog's categories). The category vocabulary is built
        once per catalog version (on the first request that needs it), and parsed requests are
        cached until the catalog changes."""
        if instruction is None:
            return Constraints()
        catalog = self.store.catalog
        state = (catalog, catalog.version)  # read before the catalog is: a change meanwhile rebuilds next time
        key = " ".join(instruction.split())
        with self._parse_lock:
            if self._parse_state is None or self._parse_state[0] is not state[0] or self._parse_state[1] != state[1]:
                self._parse_state, self._vocab = state, None
                self._parsed.clear()
            hit = self._parsed.get(key)
            if hit is not None:
                self._parsed.move_to_end(key)
                return hit
            if self._vocab is None:
                self._vocab = CategoryVocabulary(c for item in catalog for c in item.categories)
            vocab = self._vocab
        parsed = parse_instruction(key, fields=dict(self.store.field_kinds), categories=vocab)
        with self._parse_lock:
            if self._parse_state is not None and self._parse_state[0] is state[0] and self._parse_state[1] == state[1]:
                self._parsed[key] = parsed
                while len(self._parsed) > 1024:
                    self._parsed.popitem(last=False)
        return parsed

    def query_vector(self, view: UserView | None, instruction: np.ndarray | None) -> np.ndarray | None:
        """The vector channel's query: long-term profile + short-term vector + instruction."""
        recent = view.recent[-self.store.config.short_term_events :] if view is not None else []
        return query_vector(self.store.config, self.store.vectors, view.profile if view is not None else None,
                            [e.row for e in recent], [e.weight for e in recent], instruction)

    # -- recall --------------------------------------------------------------------------

    def recall(self, view: UserView | None, n: int, instruction: np.ndarray | None, flt: Filter | None,
               channels: Sequence[RecallChannel] | None = None, now: float | None = None,
               model: ServingModel | None = None, categories: Collection[str] = ()) -> Recalled:
        """Recall with the store's channels (or ``channels``, e.g. statistics that leave a step out),
        plus the behaviour index's channel when the serving model (or ``model``) has a context
        encoder. ``now``: the request's time (default: the clock), which the encoder reads as ages.
        ``categories``: when given, only items in one of them (case-insensitively) are recalled."""
        cfg = self.store.config
        channels = list(self.store.channels if channels is None else channels)
        weights = list(cfg.channel_weights)
        context = (model or self.models.current()).context
        if context is not None:
            channels.append(ContextChannel(context))
            weights.append(context.fusion_weight(cfg.context_weight))
        exclude = view.consumed if (view is not None and cfg.exclude_consumed) else frozenset()
        catalog = self.store.catalog
        wanted = frozenset(c.lower() for c in categories)

        def accept(row: int) -> bool:
            if not catalog.is_live(row):
                return False
            try:
                item = catalog.item_at(row)
            except UnknownItemError:  # removed meanwhile
                return False
            if wanted and not any(c.lower() in wanted for c in item.categories):
                return False
            return flt is None or flt.matches(item.metadata)

        request = RecallRequest(
            n=n,
            query=self.query_vector(view, instruction),
            recent_rows=tuple(e.row for e in view.recent if e.weight > 0) if view else (),
            filter=flt,
            exclude=exclude,
            accept=accept,
            history=view.history if view is not None else (),
            instruction=instruction,
            now=now,
        )
        lists = [ch.recall(request) for ch in channels]
        return Recalled(fuse(lists, weights, n), lists, channels, instruction, request)

    # -- order ---------------------------------------------------------------------------

    def features(self, view: UserView | None, recalled: Recalled) -> np.ndarray:
        """The ranking head's features of recalled candidates (see :mod:`recsieve.engine.ranker`)."""
        pop = next((c for c in recalled.channels if isinstance(c, PopularityChannel)), None)
        rows = recalled.cands.rows
        counts = np.array([pop.share(int(r)) for r in rows], np.float32) if pop else np.zeros(len(rows), np.float32)
        return candidate_features(
            recalled.cands, recalled.lists, self.store.vectors,
            profile=None if view is None else view.profile,
            recent_rows=[e.row for e in view.recent if e.weight > 0] if view is not None else [],
            instruction=recalled.instruction, popularity=counts, short_term=self.store.config.short_term_events,
            extra=np.concatenate([ch.features(recalled.request, rows) for ch in recalled.channels], axis=1),
        )

    def feature_names(self, context: bool | None = None) -> tuple[str, ...]:
        """The ranking head's feature layout for the store's channels, with the context channel's
        when ``context`` (default: when the serving model has a context encoder)."""
        if context is None:
            context = self.models.current().context is not None
        names = [c.name for c in self.store.channels] + ([ContextChannel.name] if context else [])
        extras = {c.name: c.extra_features for c in self.store.channels}
        extras[ContextChannel.name] = ContextChannel.extra_features
        return feature_names(names, extras)

    def order(self, view: UserView | None, recalled: Recalled, instruction: str | None, *, rerank: bool = True,
              cross_encoder: bool = True) -> np.ndarray:
        """Final scores of candidates (in recall order): the ranking head's (plus the cross-encoder's
        on the top ``rerank_n`` in the ``full`` tier), or a bare cross-encoder's, else recall order.
        ``cross_encoder=False`` (a refresh is pending): the head alone, never a cross-encoder."""
        cands = recalled.cands
        n = len(cands)
        recall_part = 1.0 - np.arange(n, dtype=np.float32) / max(n, 1)  # rank-normalised recall score
        if not rerank:
            return recall_part
        serving = self.models.current()
        head, reranker, cfg = serving.head, serving.reranker if cross_encoder else None, serving.config
        if head is not None:
            return self._head_order(view, recalled, instruction, head, reranker, serving.version)
        if reranker is None:
            if cfg.reranker_model == "" and not self._reranker_missing_logged:
                log.info("recsieve: no trained re-ranker configured; ordering by recall only")
                self._reranker_missing_logged = True
            return recall_part
        m = min(n, cfg.rerank_n)
        scores = self.rerank_scores(reranker, self.render_context(view, instruction), cands.rows[:m], serving.version)
        final = np.full(n, -np.inf, dtype=np.float32)
        # Re-ranked candidates always stay above the ones the re-ranker did not read.
        final[:m] = scores + cfg.blend * recall_part[:m]
        final[m:] = scores.min() - 1.0 - np.arange(n - m, dtype=np.float32) if m else recall_part[m:]
        return final

    def ranked(self, view: UserView | None, n: int, k: int, instruction_vec: np.ndarray | None,
               instruction: str | None, flt: Filter | None, constraints: Constraints, *, rerank: bool = True,
               cross_encoder: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Recall ``n`` and order them under a request's constraints: ``(rows, final scores, recall
        scores, in_category)``, best first.

        Recall runs under ``flt`` and the constraints' filter together (both must hold) and, when
        the request names categories, only within them. If that leaves fewer than ``k`` items, a
        second recall without the categories (same filter) fills up after them, its scores shifted
        below theirs; ``in_category`` is ``False`` for those."""
        flt = both(flt, constraints.filter)
        rows, final, recall = self._ranked_once(view, n, instruction_vec, instruction, flt, constraints.categories,
                                                rerank, cross_encoder)
        inside = np.ones(len(rows), dtype=bool)
        if constraints.categories and len(rows) < k:
            more, more_final, more_recall = self._ranked_once(view, n, instruction_vec, instruction, flt, (), rerank,
                                                              cross_encoder)
            new = ~np.isin(more, rows)
            more, more_final, more_recall = more[new], more_final[new], more_recall[new]
            if len(more):
                floor = float(final.min()) - 1.0 if len(final) else 0.0
                more_final = (more_final - more_final.max() + floor).astype(np.float32)
                rows, final = np.concatenate([rows, more]), np.concatenate([final, more_final])
                recall = np.concatenate([recall, more_recall])
                inside = np.concatenate([inside, np.zeros(len(more), dtype=bool)])
        return rows, final, recall, inside

    def _ranked_once(self, view: UserView | None, n: int, instruction_vec: np.ndarray | None, instruction: str | None,
                     flt: Filter | None, categories: Collection[str], rerank: bool,
                     cross_encoder: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        recalled = self.recall(view, n, instruction_vec, flt, categories=categories)
        cands = recalled.cands
        if len(cands) == 0:
            return cands.rows, np.empty(0, np.float32), cands.scores
        final = self.order(view, recalled, instruction, rerank=rerank, cross_encoder=cross_encoder)
        order = np.argsort(-final, kind="stable")
        cfg = self.store.config
        if cfg.new_item_slots and rerank:
            pop = next((c for c in recalled.channels if isinstance(c, PopularityChannel)), None)
            if pop is not None:
                fresh = np.array([pop.count(int(r)) == 0 for r in cands.rows[order]], bool)
                order = order[promote(fresh, cfg.new_item_slots, cfg.new_item_position)]
        return cands.rows[order], final[order].astype(np.float32), cands.scores[order]

    def _head_order(self, view: UserView | None, recalled: Recalled, instruction: str | None,
                    head: RankingHead, reranker: Reranker | None, version: str) -> np.ndarray:
        fast = head.score(self.features(view, recalled))
        if reranker is None:
            return fast
        rerank_n = self.models.config.rerank_n
        m = min(len(fast), rerank_n, head.blend_top or len(fast))  # as many as the weight was fitted on
        top = np.argsort(-fast, kind="stable")[:m]
        text = self.rerank_scores(reranker, self.render_context(view, instruction), recalled.cands.rows[top], version)
        return blend_scores(fast, text, top, head.blend)

    def rerank_scores(self, reranker: Reranker, context: str, rows: np.ndarray, version: str) -> np.ndarray:
        """Re-ranker scores of ``rows`` for ``context``; only pairs missing from the score cache are scored."""
        ckey = ScoreCache.context_key(version + "\x00" + context)
        keys = [(int(r), self.store.hashes.get(int(r), "")) for r in rows]
        cached = self.scores.lookup(ckey, keys)
        todo = [i for i, v in enumerate(cached) if v is None]
        scores = np.array([0.0 if v is None else v for v in cached], dtype=np.float32)
        if todo:
            from recsieve.rerankers.base import check_scores

            texts = [self.item_text(keys[i][0]) for i in todo]
            fresh = check_scores(reranker.score(context, texts), len(todo))
            scores[todo] = fresh
            self.scores.store(ckey, [keys[i] for i in todo], fresh.tolist())
        return scores

    def item_text(self, row: int) -> str:
        """The rendered text of the item at ``row`` (its title if it was removed meanwhile)."""
        try:
            return self.store.catalog.text(row)
        except UnknownItemError:  # removed while this request ran; dropped from the answer later
            return self.store.catalog.title(row)

    def render_context(self, view: UserView | None, instruction: str | None, now: float | None = None) -> str:
        """The user-context text the re-ranker reads (same rendering in training and serving)."""
        from recsieve.rerankers.context import ContextEvent, render_context

        now = time.time() if now is None else now
        events = []
        if view is not None:
            for e in reversed(view.recent):
                events.append(ContextEvent(self.store.catalog.title(e.row), e.kind, max(0.0, now - e.ts), e.text))
        events.reverse()
        return render_context(events, instruction)

    # -- explain -------------------------------------------------------------------------

    def explain(self, view: UserView | None, inst_vec: np.ndarray | None, row: int, score: float,
                recall_score: float, rank: int, instruction: str | None, *, constraints: Constraints | None = None,
                in_category: bool = True) -> Recommendation:
        """A :class:`Recommendation` with a short reason: the closest recent event, the request, or popularity.

        With ``constraints`` (what the request asked for and the answer was held to), the reason
        starts with the request and what was applied: ``matches your request '…' (kitchen; price
        under 50)``, followed by the closest recent event when that was closer than the request."""
        vectors, catalog = self.store.vectors, self.store.catalog
        vec = vectors[row]
        pop = next((c for c in self.store.channels if isinstance(c, PopularityChannel)), None)
        reason = "popular right now" if pop is not None and pop.count(row) > 0 else "from the catalog (no signal yet)"
        best = -math.inf
        if view is not None:
            for e in view.recent:
                if e.weight <= 0:
                    continue
                sim = float(vec @ vectors[e.row])
                if sim > best:
                    best, reason = sim, f"because you {_PAST.get(e.kind, e.kind)} {catalog.title(e.row)!r}"
        if inst_vec is not None:
            sim = float(vec @ inst_vec)
            if sim >= best:
                reason = f"matches your request {instruction!r}"
        if constraints:
            applied = f"matches your request {instruction!r} ({constraints.describe(in_category)})"
            reason = applied if reason.startswith("matches your request") else f"{applied}; also {reason}"
        return Recommendation(catalog.item_id(row), score, recall_score, rank, reason)
