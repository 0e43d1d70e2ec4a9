"""Training of the context model's candidate scorer (the fine sieve's cross-encoder).

:func:`fit_candidate_scorer`: a listwise softmax over each example's candidates, the item tower
frozen, the scorer's blocks starting as a copy of the trained encoder's
(:class:`~recsieve.context.modules.CandidateScorer`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recsieve.context.model import ContextModel
from recsieve.errors import InvalidInputError
from recsieve.training.batches import right_pad
from recsieve.training.context_model import native_bf16

__all__ = ["fit_candidate_scorer"]


def fit_candidate_scorer(
    model: ContextModel,
    contexts: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    target_index: Sequence[int],
    *,
    text_vectors: np.ndarray | None = None,
    epochs: int = 3,
    budget_s: float | None = None,
    lr: float = 3e-4,
    batch_size: int = 32,
    bf16: bool | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``model``'s candidate scorer listwise (softmax over each example's candidates).

    ``contexts[e]`` are catalog rows before example ``e``'s target, ``candidates[e]`` its
    candidate rows (e.g. recall's top 200) and ``target_index[e]`` the target's position in
    ``candidates[e]`` (examples whose target is not recalled are dropped by the caller).
    The item tower is frozen (the table comes from ``model``, or is recomputed from
    ``text_vectors``); the scorer starts from the encoder's blocks.
    """
    if not (len(contexts) == len(candidates) == len(target_index)) or not len(contexts):
        raise InvalidInputError("candidates", len(candidates), "need aligned, non-empty examples")
    if model.n_items == 0:
        model.set_items(text_vectors)
    bf16 = native_bf16() if bf16 is None else bool(bf16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scorer = model.scorer or model.new_scorer()
    table = torch.from_numpy(model.item_vectors())
    m = max(len(c) for c in candidates)
    cand = np.full((len(candidates), m), -1, np.int64)
    for e, c in enumerate(candidates):
        cand[e, : len(c)] = c
    tix = np.asarray(target_index, np.int64)
    L = model.settings.max_len
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    losses: list[float] = []
    n_batches = math.ceil(len(cand) / batch_size)
    total_steps = epochs * n_batches
    step = 0
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = tqdm(total=total_steps, desc="candidate scorer", disable=not progress, leave=False)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scorer.train()
            for _ in range(epochs):
                tot, cnt, stop = 0.0, 0, False
                perm = rng.permutation(len(cand))
                for lo in range(0, len(perm), batch_size):
                    idx = perm[lo : lo + batch_size]
                    rows = right_pad([contexts[i] for i in idx], L)
                    rows = rows[:, : max(1, int((rows >= 0).sum(1).max()))]
                    prog = step / max(total_steps, 1)
                    if budget_s:
                        prog = max(prog, (time.perf_counter() - start) / budget_s)
                    for g in opt.param_groups:
                        g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        s = scorer(table, torch.from_numpy(rows), torch.from_numpy(cand[idx]))
                    loss = F.cross_entropy(s.float(), torch.from_numpy(tix[idx]))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    bar.update(1)
                    tot += float(loss.detach()) * len(idx)
                    cnt += len(idx)
                    if budget_s and time.perf_counter() - start > budget_s:
                        stop = True
                        break
                losses.append(tot / max(cnt, 1))
                if stop:
                    break
    finally:
        bar.close()
        if threads is not None:
            torch.set_num_threads(before)
        scorer.eval()
    return {"losses": losses, "steps": step, "seconds": round(time.perf_counter() - start, 2)}
