"""Full-softmax cross-entropy over a whole item table without materialising the logits.

``F.cross_entropy(h @ table.T, targets)`` on ML-1M-sized batches (25,600 positions x 3,706
items) writes and re-reads a 380 MB logit matrix several times (forward, log-softmax,
backward) and is memory-bound: ~0.8 s of a ~1.1 s training step on 2 cores.
:func:`full_softmax_ce` walks the rows in chunks small enough to stay in cache and computes
the loss **and** both gradients in one pass per chunk (softmax minus one-hot, then two small
matmuls), so the backward pass only scales the stored gradients: the same numbers (fp32,
to rounding) at ~0.3 s. Autocast is switched off inside: the logits are fp32, from fp32
products or (``bf16=True``, what training asks where the CPU has bf16 arithmetic) from bf16
ones, which AMX tiles compute at 4-7x the fp32 rate on these shapes. It can
leave given (row, item) pairs out of the softmax (``exclude=``; :func:`seen_pairs` names each
training position's earlier items, ``TrainConfig.exclude_seen``).

:func:`sampled_softmax_ce` does the same for a sampled softmax: every row's target against one
shared set of sampled negatives, each logit corrected by the log of its expected count (logQ).
"""

from __future__ import annotations

import torch

__all__ = ["full_softmax_ce", "sampled_softmax_ce", "seen_pairs"]

#: Rows per chunk: 256 x 3,706 fp32 logits (~3.8 MB) measured fastest on 2 cores (64..4096 tried).
CHUNK = 256


class _StoredGradients(torch.autograd.Function):
    """Base of the two losses: ``forward`` computes the summed loss and its gradients in ``h`` and
    ``table`` at once and returns :meth:`keep`; ``backward`` only scales the stored gradients."""

    @staticmethod
    def keep(ctx, h: torch.Tensor, table: torch.Tensor, gh: torch.Tensor | None, gt: torch.Tensor | None,
             total: torch.Tensor, *, others: int) -> torch.Tensor:
        """Store the gradients of ``total`` (a sum over ``h``'s rows; ``None``: not needed) and
        return the mean; ``others``: the forward's inputs after ``h`` and ``table`` (no gradient)."""
        ctx.n, ctx.dtypes, ctx.others = max(h.shape[0], 1), (h.dtype, table.dtype), others
        ctx.save_for_backward(*(g if g is not None else total.new_zeros(0) for g in (gh, gt)))
        return total / ctx.n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        gh, gt = ctx.saved_tensors
        scale = grad / ctx.n
        out_h = (gh * scale).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        out_t = (gt * scale).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return (out_h, out_t) + (None,) * ctx.others


class _FullSoftmaxCE(_StoredGradients):
    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int,  # type: ignore[override]
                ex_rows: torch.Tensor | None, ex_items: torch.Tensor | None, bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            h32, t32 = h.detach().float(), table.detach().float()
            # the three products' operands (bf16: rounded once; each product accumulates in fp32
            # and comes out in bf16)
            hm, tm = (h32.bfloat16(), t32.bfloat16()) if bf16 else (h32, t32)
            need = ctx.needs_input_grad
            gh = torch.empty_like(h32) if need[0] else None
            gt = torch.zeros_like(t32) if need[1] else None
            total = h32.new_zeros(())
            # each chunk's share of the excluded pairs (rows sorted): one search for every chunk
            bounds = None if ex_rows is None else torch.searchsorted(
                ex_rows, torch.arange(0, h32.shape[0] + chunk, chunk)).tolist()
            for c, lo in enumerate(range(0, h32.shape[0], chunk)):
                hc, tc = hm[lo : lo + chunk], targets[lo : lo + chunk, None]
                logits = (hc @ tm.T).float()
                picked = logits.gather(1, tc)
                if bounds is not None and ex_items is not None:
                    a, b = bounds[c], bounds[c + 1]
                    logits[ex_rows[a:b] - lo, ex_items[a:b]] = float("-inf")
                top = logits.amax(1, keepdim=True)
                p = logits.sub_(top).exp_()  # one exp pass gives the loss and the softmax
                norm = p.sum(1, keepdim=True)
                total += (norm.log() + top - picked).sum()
                if gh is None and gt is None:
                    continue
                p.div_(norm)  # softmax, in place
                p.scatter_add_(1, tc, p.new_full(tc.shape, -1.0))  # minus the one-hot target
                pm = p.to(hm.dtype)  # p itself in fp32
                if gh is not None:
                    gh[lo : lo + chunk] = pm @ tm
                if gt is not None and bf16:
                    gt.add_(pm.T @ hc)  # a bf16 product, summed across chunks in fp32
                elif gt is not None:
                    gt.addmm_(p.T, hc)
        return _StoredGradients.keep(ctx, h, table, gh, gt, total, others=5)


def full_softmax_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None = None, bf16: bool = False) -> torch.Tensor:
    """Mean cross-entropy of ``h @ table.T`` (``(n, d) x (V, d)``) against int64 ``targets`` ``(n,)``.

    Equal to ``F.cross_entropy((h @ table.T).float(), targets)`` in value and gradients (to fp32
    rounding), in a fraction of the time and memory; differentiable in ``h`` and ``table``.
    ``exclude``: int64 ``(rows, items)`` pairs, ``rows`` sorted: each such item is left out of
    that row's softmax (its logit ``-inf``); a pair naming the row's own target is refused.
    ``bf16``: the three matrix products take bf16 operands (fp32 accumulation; the softmax, the
    loss and the gradients' sums stay fp32): 4-7x the fp32 rate with AMX tiles.
    """
    if h.ndim != 2 or table.ndim != 2 or h.shape[1] != table.shape[1]:
        raise ValueError(f"shapes {tuple(h.shape)} and {tuple(table.shape)} do not multiply")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"targets of shape {tuple(targets.shape)} for {h.shape[0]} rows")
    ex_rows = ex_items = None
    if exclude is not None:
        ex_rows, ex_items = (t.long() for t in exclude)
        if ex_rows.shape != ex_items.shape or ex_rows.ndim != 1:
            raise ValueError(f"exclude: rows of shape {tuple(ex_rows.shape)}, items of shape {tuple(ex_items.shape)}")
        if ex_rows.numel() and bool((targets.long()[ex_rows] == ex_items).any()):
            raise ValueError("exclude names a row's own target")
    return _FullSoftmaxCE.apply(h, table, targets.long(), int(chunk), ex_rows, ex_items, bool(bf16))


class _SampledSoftmaxCE(_StoredGradients):
    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,  # type: ignore[override]
                log_q: torch.Tensor, chunk: int) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            h32, t32 = h.detach().float(), table.detach().float()
            tn, tp = t32[negatives], t32[targets]
            bn, bp = log_q[negatives].float(), log_q[targets].float()
            need = ctx.needs_input_grad
            gh = torch.empty_like(h32) if need[0] else None
            gn = torch.zeros_like(tn) if need[1] else None
            gp = torch.empty_like(h32) if need[1] else None
            total = h32.new_zeros(())
            for lo in range(0, h32.shape[0], chunk):
                hc, tgt = h32[lo : lo + chunk], targets[lo : lo + chunk]
                pos = (hc * tp[lo : lo + chunk]).sum(1) - bp[lo : lo + chunk]
                logits = (hc @ tn.T).sub_(bn)
                logits.masked_fill_(negatives[None, :] == tgt[:, None], float("-inf"))  # a target is no negative
                top = torch.maximum(logits.amax(1), pos)
                p = logits.sub_(top[:, None]).exp_()
                p0 = (pos - top).exp_()
                norm = p.sum(1) + p0
                total += (norm.log() + top - pos).sum()
                if gh is None and gn is None:
                    continue
                p.div_(norm[:, None])
                d0 = (p0 / norm - 1.0)[:, None]  # d loss / d positive logit
                if gh is not None:
                    gh[lo : lo + chunk] = torch.addmm(d0 * tp[lo : lo + chunk], p, tn)
                if gn is not None and gp is not None:
                    gn.addmm_(p.T, hc)
                    gp[lo : lo + chunk] = d0 * hc
            gt = None
            if gn is not None and gp is not None:
                gt = torch.zeros_like(t32).index_add_(0, negatives, gn).index_add_(0, targets, gp)
        return _StoredGradients.keep(ctx, h, table, gh, gt, total, others=4)


def sampled_softmax_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                       log_q: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Mean sampled-softmax cross-entropy: row ``i`` of ``h`` ``(n, d)`` scores its target
    ``table[targets[i]]`` against the rows ``table[negatives]`` (``(K,)``, shared by every row,
    drawn with replacement), every logit minus ``log_q`` of its item (``log(K * q)`` for
    negatives drawn from ``q``: the logQ correction); a negative equal to the row's target is
    left out. Equal in value and gradients to the materialised ``F.cross_entropy`` over
    ``[positive, negatives]`` logits, in a fraction of the time; differentiable in ``h`` and ``table``.
    """
    if h.ndim != 2 or table.ndim != 2 or h.shape[1] != table.shape[1]:
        raise ValueError(f"shapes {tuple(h.shape)} and {tuple(table.shape)} do not multiply")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"targets of shape {tuple(targets.shape)} for {h.shape[0]} rows")
    if negatives.ndim != 1 or log_q.shape != (table.shape[0],):
        raise ValueError(f"negatives of shape {tuple(negatives.shape)}, log_q of shape {tuple(log_q.shape)}"
                         f" for a table of {table.shape[0]} rows")
    return _SampledSoftmaxCE.apply(h, table, targets.long(), negatives.long(), log_q, int(chunk))


def seen_pairs(inputs: torch.Tensor, targets: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``TrainConfig.exclude_seen`` leaves out of :func:`full_softmax_ce`: ``(rows, items)``
    int64, rows sorted; for each ``real`` position of the right-padded ``inputs`` ``(b, n)`` (its
    row among ``h[real]``'s, row-major), every item of its row's inputs up to and including it,
    except the position's own target (``targets`` ``(b, n)``). ``real`` must be right-padded too:
    each row's real positions come first."""
    count = real.sum(1)
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError("real: a row's real positions must come first (right padding)")
    first = torch.cumsum(count, 0) - count  # each row's first row among h[real]'s
    at, before = torch.tril_indices(inputs.shape[1], inputs.shape[1])  # before <= at, sorted by at
    items = inputs[:, before]
    keep = (at < count[:, None]) & (items >= 0) & (items != targets[:, at])  # items >= 0: a guard
    user, pair = keep.nonzero(as_tuple=True)
    return first[user] + at[pair], items[user, pair]
