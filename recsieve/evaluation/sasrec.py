"""A SASRec-style sequential recommender (Kang & McAuley, ICDM 2018), as a yardstick.

A small causal transformer over item-id embeddings reads a user's sequence and predicts
the next item at every position; it is trained with cross-entropy over **all** items (not
sampled negatives), Adam, dropout, pre-LayerNorm blocks, with item embeddings shared between
input and output. Runs on CPU by default; ``threads`` sets torch's intra-op threads only
while this model fits or scores, and restores the previous value afterwards. Randomness is
seeded inside a forked RNG, so the caller's global torch RNG is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from recsieve.errors import InvalidInputError, ModelNotTrainedError

__all__ = ["SASRec"]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class _Net(nn.Module):
    def __init__(
        self, n_items: int, dim: int, blocks: int, heads: int, max_len: int, dropout: float
    ) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)  # 0 = padding, item i -> i + 1
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.ln = nn.LayerNorm(dim)
        nn.init.normal_(self.items.weight, std=dim**-0.5)
        nn.init.normal_(self.pos.weight, std=dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(b, n, dim)`` for left-padded ``tokens`` ``(b, n)``."""
        n = tokens.shape[1]
        real = tokens > 0
        x = self.items(tokens) * math.sqrt(self.items.embedding_dim) + self.pos.weight[-n:]
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
        # a query sees earlier real items, and always itself (so padded rows are never empty)
        allowed = (causal & real[:, None, :]) | torch.eye(n, dtype=torch.bool, device=tokens.device)
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (without the padding row) for hidden states ``(m, dim)``."""
        return hidden @ self.items.weight[1:].T


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _left_pad(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
    """int64 ``(len(seqs), length)``: the last ``length`` items of each, as tokens (item + 1), left-padded with 0."""
    out = np.zeros((len(seqs), length), np.int64)
    for r, seq in enumerate(seqs):
        tail = np.asarray(seq, np.int64)[-length:]
        if tail.size:
            out[r, length - tail.size :] = tail + 1
    return out


class SASRec:
    """SASRec-style next-item model; a :class:`~recsieve.evaluation.baselines.Scorer`.

    Training stops after ``epochs`` passes or once ``time_budget`` seconds have gone by
    (checked after every batch), whichever comes first. Each user contributes its last
    ``max_len + 1`` training items (inputs and next-item targets).
    """

    def __init__(
        self,
        *,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        max_len: int = 200,
        dropout: float = 0.2,
        lr: float = 1e-3,
        batch_size: int = 128,
        epochs: int = 200,
        time_budget: float | None = None,
        seed: int = 0,
        threads: int | None = None,
        device: str = "cpu",
        progress: bool = False,
        name: str = "sasrec",
    ) -> None:
        for field, value in (
            ("hidden", hidden),
            ("blocks", blocks),
            ("heads", heads),
            ("max_len", max_len),
            ("batch_size", batch_size),
            ("epochs", epochs),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(field, value, "must be a positive integer")
        if hidden % heads:
            raise InvalidInputError("heads", heads, f"must divide hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidInputError("dropout", dropout, "must be in [0, 1)")
        if not lr > 0:
            raise InvalidInputError("lr", lr, "must be positive")
        if time_budget is not None and not time_budget > 0:
            raise InvalidInputError("time_budget", time_budget, "must be positive seconds or None")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InvalidInputError("threads", threads, "must be a positive integer or None")
        self.name = name
        self.hidden, self.blocks, self.heads, self.max_len = hidden, blocks, heads, max_len
        self.dropout, self.lr, self.batch_size = dropout, lr, batch_size
        self.epochs, self.time_budget, self.seed = epochs, time_budget, seed
        self.threads, self.device, self.progress = threads, torch.device(device), progress
        self._net: _Net | None = None
        #: What the last ``fit`` did: epochs (fractional if the budget cut one short), seconds, losses.
        self.history: dict[str, object] = {}

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        """Train from scratch on ``train_sequences`` (item indices ``< n_items``, oldest first)."""
        if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
            raise InvalidInputError("n_items", n_items, "must be a positive integer")
        seqs = [np.asarray(s, np.int64) for s in train_sequences if len(s) >= 2]
        if not seqs:
            raise InvalidInputError(
                "train_sequences", len(train_sequences), "need a sequence of 2+ items"
            )
        top = max(int(s.max()) for s in seqs)
        if top >= n_items or min(int(s.min()) for s in seqs) < 0:
            raise InvalidInputError("train_sequences", top, f"item index outside 0..{n_items - 1}")
        windows = _left_pad(seqs, self.max_len + 1)
        # batches of similar length waste less work on padding
        order_by_len = np.argsort((windows > 0).sum(axis=1), kind="stable")
        start = time.perf_counter()
        losses: list[float] = []
        done = 0.0
        with _threads(self.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            rng = np.random.default_rng(self.seed)
            net = _Net(
                n_items, self.hidden, self.blocks, self.heads, self.max_len, self.dropout
            ).to(self.device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.9, 0.98))
            net.train()
            chunks = [
                order_by_len[i : i + self.batch_size]
                for i in range(0, len(order_by_len), self.batch_size)
            ]
            bar = tqdm(
                total=self.epochs,
                desc=self.name,
                unit="epoch",
                disable=not self.progress,
                leave=False,
            )
            out_of_time = False
            for _epoch in range(self.epochs):
                total, count = 0.0, 0
                for b, idx in enumerate(rng.permutation(len(chunks))):
                    batch = windows[chunks[idx]]
                    batch = batch[:, (batch > 0).any(axis=0)]  # drop all-padding columns
                    tokens = torch.from_numpy(batch).to(self.device)
                    inputs, targets = tokens[:, :-1], tokens[:, 1:]
                    hidden = net(inputs)
                    real = (inputs > 0) & (targets > 0)
                    loss = F.cross_entropy(net.logits(hidden[real]), targets[real] - 1)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item() * int(real.sum())
                    count += int(real.sum())
                    if (
                        self.time_budget is not None
                        and time.perf_counter() - start > self.time_budget
                    ):
                        out_of_time = True
                        done += (b + 1) / len(chunks)
                        break
                else:
                    done += 1.0
                losses.append(total / max(count, 1))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if out_of_time:
                    break
            bar.close()
        net.eval()
        self._net = net
        self.history = {
            "epochs": round(done, 3),
            "seconds": round(time.perf_counter() - start, 2),
            "losses": losses,
        }

    @torch.no_grad()
    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        """Next-item scores float32 ``(len(contexts), n_items)`` from the last ``max_len`` items."""
        if self._net is None:
            raise ModelNotTrainedError(f"{self.name}: call fit() first")
        if not len(contexts):
            return np.zeros((0, self._net.items.num_embeddings - 1), np.float32)
        tokens = _left_pad(contexts, self.max_len)
        keep = (tokens > 0).any(axis=0)
        keep[-1] = True  # an empty context still gets a (padding) position to read
        with _threads(self.threads):
            t = torch.from_numpy(tokens[:, keep]).to(self.device)
            hidden = self._net(t)[:, -1]
            return self._net.logits(hidden).float().cpu().numpy().astype(np.float32, copy=False)
