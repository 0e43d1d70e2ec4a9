"""The context model at serving time: numpy in, numpy out, plus save/load of its folder.

A :class:`ContextModel` bundles an :class:`~recsieve.context.modules.ItemTower`, a
:class:`~recsieve.context.modules.ContextEncoder` and (once trained) a
:class:`~recsieve.context.modules.CandidateScorer`, with the item-token table of the catalog
it serves. The table is computed once from the items' text vectors (:meth:`set_items`) and
extended for items upserted later (:meth:`add_items`, text alone: they have no ID residual).
Inference runs on ``threads`` torch threads (1 by default: one user is too little work to split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsieve.context.cooccurrence import COOCCURRENCE_FILE, CoOccurrence
from recsieve.context.modules import (
    ACTIVATIONS,
    BLOCK_STYLES,
    CandidateScorer,
    ContextEncoder,
    ItemTower,
    gap_buckets,
)
from recsieve.errors import (
    CorruptStoreError,
    IncompatibleVersionError,
    InvalidInputError,
    ModelNotTrainedError,
    StoreError,
)
from recsieve.storage import atomic_write_json, read_json, replacing_folder, sha256_file

__all__ = ["ContextSettings", "ContextModel", "FORMAT_VERSION", "MANIFEST", "KIND", "torch_threads"]

#: 2: the encoder's block layout is a setting (``ContextSettings.block``), SASRec's by default.
#: 3: the FFN's activation and the attention-weight dropout are settings (each manifest records its
#: values; ReLU by default, attention dropout 0.1 until 2b07c09 and 0 since).
FORMAT_VERSION = 3
#: Format 1 folders still load (their blocks are pre-LN), formats 1 and 2 with GELU FFNs.
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
KIND = "recsieve-context-model"
_WEIGHTS = ("tower.pt", "encoder.pt", "scorer.pt")


@dataclass(frozen=True)
class ContextSettings:
    """Sizes and settings of a context model (saved in its manifest)."""

    n_warm: int
    text_dim: int = 384
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 200
    dropout: float = 0.1
    adapter_hidden: int = 256
    use_ids: bool = True
    #: Event kinds the model knows, in embedding order (index + 1); others map to 0 (unknown).
    kinds: tuple[str, ...] = ()
    instruction_dim: int = 0
    n_candidate_types: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    #: the encoder's transformer block layout (:data:`~recsieve.context.modules.BLOCK_STYLES`)
    block: str = "sasrec"
    #: the FFN's nonlinearity (:data:`~recsieve.context.modules.ACTIVATIONS`)
    activation: str = "relu"
    #: dropout on the attention weights while training. SASRec's reference code has 0.1; 0 keeps
    #: the fused attention kernel (a 2-thread training step ~25% faster on ML-1M) and measured
    #: no worse: ID-only, ML-1M, all users, equal time budgets, test NDCG@10 0.1641 against
    #: 0.1623 with 0.1 (paired +0.0019 [-0.0011, +0.0047])
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_warm", "dim", "blocks", "heads", "max_len", "adapter_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(name, v, "must be a positive integer")
        if self.dim % self.heads:
            raise InvalidInputError("heads", self.heads, f"must divide dim={self.dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError("dropout", self.dropout, "must be in [0, 1)")
        if self.block not in BLOCK_STYLES:
            raise InvalidInputError("block", self.block, f"expected one of {BLOCK_STYLES}")
        if self.activation not in ACTIVATIONS:
            raise InvalidInputError("activation", self.activation, f"expected one of {tuple(ACTIVATIONS)}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise InvalidInputError("attention_dropout", self.attention_dropout, "must be in [0, 1)")
        object.__setattr__(self, "kinds", tuple(self.kinds))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's (process-wide) thread count set to ``n`` meanwhile, unless it already is (``None``: left)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


class ContextModel:
    """Item tower + context encoder (+ candidate scorer) with a numpy serving API."""

    def __init__(self, settings: ContextSettings, *, threads: int | None = 1) -> None:
        self.settings = settings
        self.threads = threads
        s = settings
        self.tower = ItemTower(
            s.text_dim, s.dim, s.n_warm, hidden=s.adapter_hidden, use_ids=s.use_ids
        )
        self.encoder = ContextEncoder(
            s.dim,
            blocks=s.blocks,
            heads=s.heads,
            max_len=s.max_len,
            dropout=s.dropout,
            n_kinds=len(s.kinds),
            instruction_dim=s.instruction_dim,
            block=s.block,
            activation=s.activation,
            attention_dropout=s.attention_dropout,
        )
        self.scorer: CandidateScorer | None = None
        #: item co-occurrence counts read as a ranking feature (set by training; ``None``: none)
        self.cooccurrence: CoOccurrence | None = None
        self._kind_index = {k: i + 1 for i, k in enumerate(s.kinds)}
        self._table: torch.Tensor | None = None  # (n_items, dim) float32 item tokens
        self.eval()

    # ---- modules -------------------------------------------------------------------------
    def eval(self) -> ContextModel:
        for m in (self.tower, self.encoder, self.scorer):
            if m is not None:
                m.eval()
        return self

    def new_scorer(self) -> CandidateScorer:
        """A candidate scorer initialised from the encoder (trained by recsieve.training)."""
        self.scorer = CandidateScorer(self.encoder, n_types=self.settings.n_candidate_types)
        self.scorer.eval()
        return self.scorer

    # ---- items ---------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return 0 if self._table is None else int(self._table.shape[0])

    def _text(self, text_vectors: np.ndarray | None, n: int | None) -> torch.Tensor | None:
        if self.settings.text_dim == 0:
            return None if text_vectors is None else torch.zeros(len(text_vectors), 0)
        arr = np.asarray(text_vectors, np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.settings.text_dim:
            raise InvalidInputError(
                "text_vectors", arr.shape, f"expected (n, {self.settings.text_dim}) float32"
            )
        if not np.isfinite(arr).all():
            raise InvalidInputError("text_vectors", "non-finite", "vectors must be finite")
        return torch.from_numpy(np.ascontiguousarray(arr))

    @torch.no_grad()
    def set_items(self, text_vectors: np.ndarray | None, cold: np.ndarray | None = None) -> None:
        """(Re)compute the item-token table for catalog rows ``0..n-1`` from their text vectors.

        ``cold`` (bool ``(n,)``) flags rows without an ID residual; rows ``>= n_warm`` never have one.
        """
        text = self._text(text_vectors, None)
        c = None if cold is None else torch.from_numpy(np.asarray(cold, bool))
        with torch_threads(self.threads):
            self._table = self.tower(text, c).float().contiguous()

    @torch.no_grad()
    def add_items(self, text_vectors: np.ndarray) -> np.ndarray:
        """Append cold items (rows ``n_items..``): tokens from text alone. Returns their tokens."""
        if self._table is None:
            raise ModelNotTrainedError("context model: call set_items() first")
        text = self._text(text_vectors, None)
        if self.tower.adapter is None:
            raise InvalidInputError("text_vectors", "ID-only tower", "cannot embed cold items")
        with torch_threads(self.threads):
            new = self.tower.adapter(text).float()
        self._table = torch.cat([self._table, new], 0).contiguous()
        return new.numpy().copy()

    @torch.no_grad()
    def update_items(self, rows: np.ndarray, text_vectors: np.ndarray) -> None:
        """Tokens for catalog ``rows`` whose text vectors are given (an item upserted into the
        catalog): rows past the table are appended (cold: text alone), others recomputed (with
        their ID residual when they have one). New rows must follow the table without a gap."""
        if self._table is None:
            raise ModelNotTrainedError("context model: call set_items() first")
        rows = np.asarray(rows, np.int64)
        text = self._text(text_vectors, None)
        if text is None or self.tower.adapter is None:
            raise InvalidInputError("text_vectors", "ID-only tower", "cannot embed items from text")
        n = self.n_items
        if rows.size and rows.max() >= n:
            wanted = np.arange(n, rows.max() + 1)
            if not np.isin(wanted, rows).all():
                raise InvalidInputError("rows", int(rows.max()), f"new rows must follow the table's {n} rows")
        with torch_threads(self.threads):
            tokens = self.tower.rows(text, torch.from_numpy(rows)).float()
        old = rows < n
        if old.any():  # in place: a concurrent reader sees the row's old token or its new one
            self._table[torch.from_numpy(rows[old])] = tokens[torch.from_numpy(old)]
        if (~old).any():  # appended as a new table (O(n) per batch), so readers keep a whole one
            new = rows[~old]
            grown = torch.zeros(int(new.max()) + 1 - n, self._table.shape[1])
            grown[torch.from_numpy(new - n)] = tokens[torch.from_numpy(~old)]
            self._table = torch.cat([self._table, grown], 0).contiguous()

    def item_vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``(len(rows), dim)`` tokens of some catalog rows."""
        if self._table is None:
            raise ModelNotTrainedError("context model: call set_items() first")
        return self._table.numpy()[np.asarray(rows, np.int64)]  # numpy: no torch thread pool on the request path

    def item_vectors(self) -> np.ndarray:
        """float32 ``(n_items, dim)`` item tokens: what the behaviour index holds."""
        if self._table is None:
            raise ModelNotTrainedError("context model: call set_items() first")
        return self._table.numpy().copy()

    # ---- contexts ------------------------------------------------------------------------
    def _batch(
        self,
        contexts: Sequence[np.ndarray],
        kinds: Sequence[Sequence[str]] | None,
        timestamps: Sequence[np.ndarray] | None,
        request_times: Sequence[float | None] | None,
        instructions: np.ndarray | None,
    ) -> dict[str, torch.Tensor | None]:
        L = self.settings.max_len
        n = max(1, min(L, max((len(c) for c in contexts), default=1)))
        rows = np.full((len(contexts), n), -1, np.int64)
        k = np.zeros_like(rows) if kinds is not None else None
        g = np.zeros_like(rows) if timestamps is not None else None
        for r, ctx in enumerate(contexts):
            ctx = np.asarray(ctx, np.int64)
            if ctx.size and (ctx.min() < 0 or ctx.max() >= self.n_items):
                raise InvalidInputError("contexts", int(ctx.max()), f"rows must be in 0..{self.n_items - 1}")
            tail = ctx[-n:]
            t = tail.size
            if t:
                rows[r, :t] = tail
                if k is not None:
                    k[r, :t] = [self._kind_index.get(x, 0) for x in list(kinds[r])[-t:]]
                if g is not None:
                    rt = None if request_times is None else request_times[r]
                    g[r, :t] = gap_buckets(np.asarray(timestamps[r])[-t:], rt)
        ins = None
        if instructions is not None:
            ins = torch.from_numpy(np.ascontiguousarray(instructions, np.float32))
        return {
            "rows": torch.from_numpy(rows),
            "kinds": None if k is None else torch.from_numpy(k),
            "gaps": None if g is None else torch.from_numpy(g),
            "instruction": ins,
        }

    @torch.no_grad()
    def encode(
        self,
        contexts: Sequence[np.ndarray],
        *,
        kinds: Sequence[Sequence[str]] | None = None,
        timestamps: Sequence[np.ndarray] | None = None,
        request_times: Sequence[float | None] | None = None,
        instructions: np.ndarray | None = None,
    ) -> np.ndarray:
        """User vectors float32 ``(len(contexts), dim)``: the query of the behaviour index.

        ``contexts[u]`` are catalog rows, oldest first (the last ``max_len`` are read);
        ``kinds``/``timestamps`` align with them; ``instructions`` is ``(b, text_dim)``
        (an all-zero row = no instruction).
        """
        if self._table is None:
            raise ModelNotTrainedError("context model: call set_items() first")
        if not len(contexts):
            return np.zeros((0, self.settings.dim), np.float32)
        b = self._batch(contexts, kinds, timestamps, request_times, instructions)
        with torch_threads(self.threads):
            u = self.encoder.user(self._table, b["rows"], b["kinds"], b["gaps"], b["instruction"])
            return u.float().numpy().copy()

    def score_items(self, contexts: Sequence[np.ndarray], **kw: Any) -> np.ndarray:
        """float32 ``(len(contexts), n_items)``: user vector · every item token (a model trained with
        ``TrainConfig.exclude_seen`` never learnt to rank a context's own items: leave them out)."""
        u = self.encode(contexts, **kw)
        return (u @ self._table.numpy().T).astype(np.float32, copy=False)

    @torch.no_grad()
    def score_candidates(
        self,
        context: np.ndarray,
        candidates: np.ndarray,
        *,
        kinds: Sequence[str] | None = None,
        timestamps: np.ndarray | None = None,
        request_time: float | None = None,
        instruction: np.ndarray | None = None,
        candidate_types: np.ndarray | None = None,
    ) -> np.ndarray:
        """Fine-sieve scores float32 ``(len(candidates),)`` of one user's candidate rows."""
        if self.scorer is None:
            raise ModelNotTrainedError("context model: the candidate scorer is not trained")
        cand = np.asarray(candidates, np.int64)
        if cand.ndim != 1 or (cand.size and (cand.min() < 0 or cand.max() >= self.n_items)):
            raise InvalidInputError("candidates", cand.shape, f"expected rows in 0..{self.n_items - 1}")
        b = self._batch(
            [context],
            None if kinds is None else [kinds],
            None if timestamps is None else [timestamps],
            None if request_time is None else [request_time],
            None if instruction is None else np.asarray(instruction, np.float32)[None],
        )
        types = None
        if candidate_types is not None:
            types = torch.from_numpy(np.asarray(candidate_types, np.int64)[None])
        with torch_threads(self.threads):
            s = self.scorer(
                self._table,
                b["rows"],
                torch.from_numpy(cand[None]),
                b["kinds"],
                b["gaps"],
                b["instruction"],
                types,
            )
        return s[0].float().numpy().copy()

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model folder atomically: weights, item tokens, then a checksummed manifest."""
        if self._table is None:
            raise ModelNotTrainedError("context model: call set_items() before save()")
        folder = Path(folder)
        with replacing_folder(folder) as work:
            torch.save(self.tower.state_dict(), work / "tower.pt")
            torch.save(self.encoder.state_dict(), work / "encoder.pt")
            if self.scorer is not None:
                torch.save(self.scorer.state_dict(), work / "scorer.pt")
            np.save(work / "items.npy", self._table.numpy())
            if self.cooccurrence is not None:
                self.cooccurrence.save(work / COOCCURRENCE_FILE)
            files = sorted(p.name for p in work.iterdir())
            manifest = {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "settings": asdict(self.settings),
                "n_items": self.n_items,
                "has_scorer": self.scorer is not None,
                "files": {name: sha256_file(work / name) for name in files},
            }
            atomic_write_json(work / MANIFEST, manifest)  # last: its presence marks a whole folder
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, threads: int | None = 1) -> ContextModel:
        """Load a folder written by :meth:`save`; a corrupt or half-written one is refused."""
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"context model: no such folder {folder}")
        if not (folder / MANIFEST).exists():
            raise CorruptStoreError(
                f"context model: {folder} has no {MANIFEST} (half-written or not a model folder)"
            )
        man = read_json(folder / MANIFEST, "context model manifest")
        if not isinstance(man, dict) or man.get("kind") != KIND:
            raise CorruptStoreError(f"context model: {folder / MANIFEST} is not a context-model manifest")
        if man.get("format_version") not in READABLE_VERSIONS:
            raise IncompatibleVersionError(
                f"context model: format_version={man.get('format_version')!r}, this recsieve reads {READABLE_VERSIONS}"
            )
        files = man.get("files")
        if not isinstance(files, dict) or "items.npy" not in files:
            raise CorruptStoreError(f"context model: {folder / MANIFEST} lists no files")
        for name, digest in files.items():
            path = folder / name
            if not path.is_file():
                raise CorruptStoreError(f"context model: missing file {path}")
            if sha256_file(path) != digest:
                raise CorruptStoreError(f"context model: checksum mismatch for {path} (corrupt or half-written)")
        try:
            raw = dict(man["settings"])
            raw["kinds"] = tuple(raw.get("kinds", ()))
            if man["format_version"] == 1:  # format 1 predates the setting: pre-LN blocks
                raw.setdefault("block", "prenorm")
            if man["format_version"] <= 2:  # formats 1-2 predate these settings: GELU, no attention dropout
                raw.setdefault("activation", "gelu")
                raw.setdefault("attention_dropout", 0.0)
            settings = ContextSettings(**raw)
            model = cls(settings, threads=threads)
            model.tower.load_state_dict(torch.load(folder / "tower.pt", weights_only=True))
            model.encoder.load_state_dict(torch.load(folder / "encoder.pt", weights_only=True))
            if man.get("has_scorer"):
                model.new_scorer().load_state_dict(torch.load(folder / "scorer.pt", weights_only=True))
            table = np.load(folder / "items.npy", allow_pickle=False)
            if COOCCURRENCE_FILE in files:
                model.cooccurrence = CoOccurrence.load(folder / COOCCURRENCE_FILE)
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise CorruptStoreError(f"context model: cannot read {folder}: {exc}") from None
        model._table = torch.from_numpy(np.ascontiguousarray(table, np.float32))
        return model.eval()

    def manifest_json(self) -> str:
        return json.dumps(asdict(self.settings), sort_keys=True)
