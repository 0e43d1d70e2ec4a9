"""The context model's share of batched ranking examples: user vectors of many requests, and the
candidate scorer's scores of many requests' candidates (:mod:`recsieve.training.batched_examples`).

Serving encodes one request at a time (:meth:`~recsieve.engine.context.ContextRuntime.user_vector`,
:meth:`~recsieve.engine.context.ContextRuntime.cross_scores`). The user vector decides the
behaviour index's candidates and their order, so here it must be serving's to the bit: requests
are encoded in batches of one context length, which compute what a single request computes (a
batch whose first vector differs from its own single encoding is encoded one by one). The
candidate scorer's scores are only features, so its batches mix lengths (padding is masked out)
and agree with serving's to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recsieve.context.model import torch_threads
from recsieve.context.modules import gap_buckets
from recsieve.engine.context import ContextRuntime

__all__ = ["Context", "user_vectors", "cross_scores"]

#: One request's context as the encoder reads it: rows (positive events, the last ``max_len``),
#: their kinds and times when the model reads them (else ``None``).
Context = tuple[np.ndarray, "list[str] | None", "np.ndarray | None"]


def user_vectors(runtime: ContextRuntime, contexts: Sequence[Context], instructions: Sequence[np.ndarray | None],
                 nows: Sequence[float], batch: int = 128) -> list[np.ndarray | None]:
    """Each request's user vector as :meth:`ContextRuntime.user_vector` computes it (``None``: no
    history and no instruction)."""
    model = runtime.model
    inst_dim = model.settings.instruction_dim
    out: list[np.ndarray | None] = [None] * len(contexts)
    by_len: dict[int, list[int]] = {}
    for g, (rows, _, _) in enumerate(contexts):
        if rows.size or instructions[g] is not None:
            by_len.setdefault(rows.size, []).append(g)

    def encode(gs: Sequence[int]) -> np.ndarray:
        ins = None
        if inst_dim and any(instructions[g] is not None for g in gs):
            ins = np.stack([_instruction(instructions[g], inst_dim) for g in gs])
        kinds, ts = [contexts[g][1] for g in gs], [contexts[g][2] for g in gs]
        return model.encode([contexts[g][0] for g in gs], kinds=None if kinds[0] is None else kinds,
                            timestamps=None if ts[0] is None else ts, request_times=[nows[g] for g in gs],
                            instructions=ins)

    for gs in by_len.values():
        for start in range(0, len(gs), batch):
            part = gs[start : start + batch]
            got = encode(part)
            if len(part) > 1 and not np.array_equal(got[0], encode(part[:1])[0]):
                got = np.stack([encode([g])[0] for g in part])
            for g, v in zip(part, got):
                out[g] = v
    return out


def _instruction(vec: np.ndarray | None, dim: int) -> np.ndarray:
    return np.asarray(vec, np.float32) if vec is not None else np.zeros(dim, np.float32)


def cross_scores(runtime: ContextRuntime, contexts: Sequence[Context], candidates: Sequence[np.ndarray],
                 instructions: Sequence[np.ndarray | None], nows: Sequence[float], table: torch.Tensor,
                 batch: int = 64) -> list[np.ndarray]:
    """Each request's candidate scorer scores of its ``candidates`` (as
    :meth:`ContextRuntime.cross_scores` gives them, to float rounding; zeros without a scorer).
    ``table``: the model's item tokens (``torch.from_numpy(model.item_vectors())``)."""
    model = runtime.model
    out = [np.zeros(len(c), np.float32) for c in candidates]
    if model.scorer is None:
        return out
    settings = model.settings
    kind_index = {k: i + 1 for i, k in enumerate(settings.kinds)}
    todo = sorted((g for g in range(len(candidates)) if len(candidates[g])), key=lambda g: contexts[g][0].size)
    with torch.no_grad(), torch_threads(model.threads):
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            width = max(1, min(settings.max_len, max(contexts[g][0].size for g in part)))
            rows = np.full((len(part), width), -1, np.int64)
            kinds = np.zeros_like(rows) if contexts[part[0]][1] is not None else None
            gaps = np.zeros_like(rows) if contexts[part[0]][2] is not None else None
            cands = np.full((len(part), max(len(candidates[g]) for g in part)), -1, np.int64)
            for i, g in enumerate(part):
                ctx, ks, ts = contexts[g]
                t = ctx.size
                rows[i, :t] = ctx
                if kinds is not None and t:
                    kinds[i, :t] = [kind_index.get(k, 0) for k in ks[-t:]]
                if gaps is not None and t:
                    gaps[i, :t] = gap_buckets(np.asarray(ts)[-t:], nows[g])
                cands[i, : len(candidates[g])] = candidates[g]
            ins = None
            if settings.instruction_dim and any(instructions[g] is not None for g in part):
                ins = torch.from_numpy(np.stack([_instruction(instructions[g], settings.instruction_dim)
                                                 for g in part]))
            s = model.scorer(table, torch.from_numpy(rows), torch.from_numpy(cands),
                             None if kinds is None else torch.from_numpy(kinds),
                             None if gaps is None else torch.from_numpy(gaps), ins, None)
            s = s.float().numpy()
            for i, g in enumerate(part):
                out[g] = s[i, : len(candidates[g])].copy()
    return out
