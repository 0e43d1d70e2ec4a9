"""The learned ranking head: orders recalled candidates from everything recall knows about them.

Reciprocal-rank fusion gives every channel a fixed weight for every user. The ranking head
learns instead how much to trust each signal: per candidate it reads a small feature
vector (:func:`candidate_features`) — each channel's rank and normalised score, the fused
rank, cosine similarity to the user's long-term profile, short-term vector, last item and
most similar recent item, to the instruction, and the item's popularity — and a two-layer
MLP turns it into a score. It is trained with a listwise softmax loss on each user's last
step, with recall statistics that exclude that step (see :mod:`recsieve.training`).

Inference is numpy only (microseconds for a few hundred candidates): this is the ``fast``
re-rank tier. The ``full`` tier adds the cross-encoder's score with the weight ``blend``
fitted on held-out users (``0`` when the cross-encoder did not help there).

A trained head is a folder holding ``ranker.json`` (feature names, normalisation, blend,
training report) and ``ranker.npz`` (weights), optionally with ``cross-encoder/``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError, StoreError
from recsieve.types import Candidates

__all__ = ["RANKER_FILE", "RankingHead", "blend_scores", "candidate_features", "feature_names", "listwise_ndcg"]

RANKER_FILE = "ranker.json"
_WEIGHTS_FILE = "ranker.npz"
_FORMAT = 1

_SHARED_FEATURES = (
    "fused.inv_rank",
    "sim.profile",
    "sim.short_term",
    "sim.last",
    "sim.recent_max",
    "sim.instruction",
    "has_instruction",
    "popularity",
    "history_len",
)


def feature_names(channels: Sequence[str], extras: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """The feature layout for an engine with these recall channels (``extras``: each channel's
    own extra features, see :attr:`RecallChannel.extra_features`)."""
    per_channel = tuple(f"{c}.{what}" for c in channels for what in ("inv_rank", "score"))
    extra = tuple(f"{c}.{x}" for c in channels for x in (extras or {}).get(c, ()))
    return per_channel + _SHARED_FEATURES + extra


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    norm = float(np.linalg.norm(v))
    return None if norm < 1e-9 else (v / norm).astype(np.float32)


def candidate_features(
    cands: Candidates,
    lists: Sequence[Candidates],
    vectors: np.ndarray,
    *,
    profile: np.ndarray | None,
    recent_rows: Sequence[int],
    instruction: np.ndarray | None,
    popularity: np.ndarray,
    extra: np.ndarray | None = None,
    short_term: int = 5,
) -> np.ndarray:
    """Features of each candidate (``float32``, shape ``(len(cands), F)``, layout :func:`feature_names`).

    ``lists``: each channel's own candidates (same order as the channel names); ``vectors``:
    the engine's item vectors (indexed by row, unit length); ``recent_rows``: the user's
    positive recent items, most recent last; ``popularity``: each candidate's share of all
    positive events (the feature is ``log1p(10_000 * share)``); ``extra``: the channels' own features, appended last.
    """
    rows = cands.rows
    n = rows.shape[0]
    cols: list[np.ndarray] = []
    for lst in lists:
        inv = np.zeros(n, np.float32)
        score = np.zeros(n, np.float32)
        if len(lst):
            pos = {r: i for i, r in enumerate(lst.rows.tolist())}
            top = float(np.max(np.abs(lst.scores))) or 1.0
            for j, r in enumerate(rows.tolist()):
                i = pos.get(r)
                if i is not None:
                    inv[j] = 1.0 / np.sqrt(i + 1.0)
                    score[j] = lst.scores[i] / top
        cols += [inv, score]
    cols.append((1.0 / np.sqrt(np.arange(n, dtype=np.float32) + 1.0)).astype(np.float32))
    item = vectors[rows]
    recent = [int(r) for r in recent_rows]
    zero = np.zeros(n, np.float32)
    prof = _unit(profile)
    short = _unit(vectors[recent[-short_term:]].sum(0)) if recent else None
    cols.append(item @ prof if prof is not None else zero)
    cols.append(item @ short if short is not None else zero)
    if recent:
        sims = item @ vectors[recent].T
        cols += [sims[:, -1], sims.max(axis=1)]
    else:
        cols += [zero, zero]
    inst = _unit(instruction)
    cols.append(item @ inst if inst is not None else zero)
    cols.append(np.full(n, 1.0 if inst is not None else 0.0, np.float32))
    cols.append(np.log1p(10_000.0 * np.asarray(popularity, np.float32)))
    cols.append(np.full(n, np.log1p(len(recent)), np.float32))
    x = np.stack(cols, axis=1).astype(np.float32, copy=False)
    return x if extra is None or extra.shape[1] == 0 else np.concatenate([x, extra.astype(np.float32)], axis=1)


@dataclass
class RankingHead:
    """A trained two-layer MLP over candidate features (numpy inference).

    ``score(features)`` gives one ``float32`` score per candidate, higher = better.
    ``blend`` is the cross-encoder's weight in the ``full`` tier, fitted re-scoring the head's
    top ``blend_top``; ``cross_encoder`` the sub-folder holding it (empty: none was trained).
    """

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float
    blend: float = 0.0
    cross_encoder: str = ""
    blend_top: int = 0
    report: dict[str, Any] = field(default_factory=dict)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores of candidates with features ``x`` (shape ``(n, len(self.features))``)."""
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise InvalidInputError("features", x.shape, f"expected (n, {len(self.features)})")
        h = np.maximum((x - self.mean) / self.std @ self.w1 + self.b1, 0.0)
        return (h @ self.w2 + self.b2).astype(np.float32)

    def with_features(self, names: Sequence[str]) -> RankingHead:
        """The same head over the feature layout ``names``, which must hold every one of its
        features: a feature it was not trained on gets weight 0, so every score is unchanged
        (a head trained before a feature was added keeps serving)."""
        names = tuple(names)
        missing = [f for f in self.features if f not in names]
        if missing:
            raise InvalidInputError("features", missing, f"not in the layout {names}")
        at = {f: i for i, f in enumerate(self.features)}
        take = [at.get(f, -1) for f in names]
        known = np.array([i >= 0 for i in take])
        pick = np.maximum(np.array(take, np.int64), 0)
        mean = np.where(known, self.mean[pick], 0.0).astype(self.mean.dtype)
        std = np.where(known, self.std[pick], 1.0).astype(self.std.dtype)
        w1 = np.where(known[:, None], self.w1[pick], 0.0).astype(self.w1.dtype)
        return RankingHead(names, mean, std, w1, self.b1, self.w2, self.b2, self.blend, self.cross_encoder,
                           self.blend_top, dict(self.report))

    @classmethod
    def average(cls, heads: Sequence[RankingHead]) -> RankingHead:
        """One head whose score is the mean of ``heads``' scores, exactly (to float rounding): their
        hidden units side by side, each head's normalisation folded into its first layer, the
        output weights divided by their number. Same features required; ``blend`` and the
        cross-encoder are the first head's."""
        if not heads:
            raise InvalidInputError("heads", 0, "need at least one head to average")
        first = heads[0]
        for i, h in enumerate(heads):
            if h.features != first.features:
                raise InvalidInputError(f"heads[{i}].features", h.features, f"expected {first.features}")
        # (x - m_k) / s_k = ((x - m_0) / s_0) * (s_0 / s_k) + (m_0 - m_k) / s_k
        w1 = [h.w1 * (first.std / h.std)[:, None] for h in heads]
        b1 = [h.b1 + ((first.mean - h.mean) / h.std) @ h.w1 for h in heads]
        k = len(heads)
        return cls(first.features, first.mean, first.std, np.concatenate(w1, axis=1).astype(np.float32),
                   np.concatenate(b1).astype(np.float32),
                   (np.concatenate([h.w2 for h in heads]) / k).astype(np.float32),
                   float(sum(h.b2 for h in heads) / k), first.blend, first.cross_encoder, first.blend_top,
                   dict(first.report))

    def save(self, folder: str | Path) -> None:
        """Write ``ranker.npz`` and then ``ranker.json`` (each atomically) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (_WEIGHTS_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=self.mean, std=self.std, w1=self.w1, b1=self.b1, w2=self.w2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / _WEIGHTS_FILE)
        meta = {"format": _FORMAT, "features": list(self.features), "b2": self.b2, "blend": self.blend,
                "blend_top": self.blend_top, "cross_encoder": self.cross_encoder, "report": self.report}
        tmp = folder / (RANKER_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2), "utf-8")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / RANKER_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> RankingHead:
        """Load a head saved by :meth:`save`; a missing or malformed file raises :class:`StoreError`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / RANKER_FILE).read_text("utf-8"))
            with np.load(folder / _WEIGHTS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k].astype(np.float32) for k in ("mean", "std", "w1", "b1", "w2")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise StoreError(f"{folder}: not a readable ranking head ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise StoreError(f"{folder}/{RANKER_FILE}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}")
        names = tuple(meta.get("features") or ())
        f, h = len(names), arrays["b1"].shape[0]
        shapes = {"mean": (f,), "std": (f,), "w1": (f, h), "b1": (h,), "w2": (h,)}
        for k, shape in shapes.items():
            if arrays[k].shape != shape:
                raise StoreError(f"{folder}/{_WEIGHTS_FILE}: {k} has shape {arrays[k].shape}, expected {shape}")
        return cls(names, b2=float(meta["b2"]), blend=float(meta.get("blend", 0.0)),
                   blend_top=int(meta.get("blend_top", 0)), cross_encoder=str(meta.get("cross_encoder", "")), report=dict(meta.get("report") or {}), **arrays)


def blend_scores(head_scores: np.ndarray, text_scores: np.ndarray, top: np.ndarray, weight: float) -> np.ndarray:
    """The ``full`` tier's final scores: the head's, plus ``weight`` times the cross-encoder's
    score on the candidates ``top`` (positions the cross-encoder read, ``text_scores`` in that
    order). Candidates it did not read stay below those it did, in the head's order.

    The one blend rule: serving orders by it and training fits ``weight`` through it.
    """
    final = head_scores.astype(np.float32, copy=True)
    final[top] += weight * np.asarray(text_scores, dtype=np.float32)
    rest = np.ones(len(final), bool)
    rest[top] = False
    if rest.any():
        final[rest] = final[top].min() - 1.0 - (head_scores[rest].max() - head_scores[rest])
    return final


def listwise_ndcg(scores: np.ndarray, target: int, k: int = 10) -> float:
    """NDCG@k of one list whose single relevant candidate is at position ``target``.

    Ties are neither rewarded nor punished: the target's gain is averaged over every
    position of its tie block.
    """
    better = int((scores > scores[target]).sum())
    ties = int((scores == scores[target]).sum()) - 1
    total = 0.0
    for r in range(better, better + ties + 1):
        total += 1.0 / np.log2(r + 2.0) if r < k else 0.0
    return total / (ties + 1)
