"""A re-ranker over a cross-encoder trained by recsieve (sentence-transformers ``CrossEncoder``).

The model is a folder written by :func:`recsieve.rerankers.training.train_reranker`; its
marker is read and checked by :func:`recsieve.rerankers.folder.read_marker` -- a folder not
trained by recsieve is refused with :class:`~recsieve.errors.ModelNotTrainedError`, so an
untrained head is never served. :func:`recsieve.rerankers.factory.open_cross_encoder` picks
between this torch re-ranker and the ONNX one by backend name.

Construction is cheap; the model loads on first use (or :meth:`CrossEncoderReranker.load`),
once, under a lock. Scores are the raw logits, ``float32``.

``MARKER_FILE``, ``MARKER_FORMAT``, ``DEFAULT_MAX_LENGTH`` and ``read_marker`` (from
:mod:`recsieve.rerankers.folder`) are still importable from here; ``open_cross_encoder`` and
the backend names (``CE_BACKENDS``) are in :mod:`recsieve.rerankers.factory`, which imports
this module (so this module cannot re-export them without an import cycle).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from recsieve.errors import CorruptStoreError, InvalidInputError
from recsieve.rerankers.base import Reranker, check_pair_input, check_scores
from recsieve.rerankers.folder import (
    DEFAULT_MAX_LENGTH,
    MARKER_FILE,
    MARKER_FORMAT,
    read_marker,
    trained_max_length,
)

__all__ = ["CrossEncoderReranker", "DTYPES",
           # re-exported from recsieve.rerankers.folder
           "MARKER_FILE", "MARKER_FORMAT", "DEFAULT_MAX_LENGTH", "read_marker"]

#: Number formats a cross-encoder can run in.
DTYPES = ("float32", "bfloat16")


class CrossEncoderReranker(Reranker):
    """Scores (context, item text) pairs with a trained cross-encoder.

    ``model`` is the path of a folder written by ``train_reranker``; ``batch_size`` pairs are
    scored per forward pass; inputs longer than ``max_length`` tokens are truncated (``None``:
    the length the model was trained with, from its marker, else :data:`DEFAULT_MAX_LENGTH`
    -- serving the length training saw avoids skew); ``device`` is a torch device string;
    ``dtype`` ``"bfloat16"`` runs the weights and activations in bf16 (half the memory
    traffic; fast only on CPUs with bf16 instructions). Calls from many threads are safe: the model loads once and
    forward passes are serialised (the tokenizer is not safe to share between threads, and
    two concurrent passes would only compete for the same cores).
    """

    name = "cross-encoder"

    def __init__(self, model: str | os.PathLike, *, batch_size: int = 32, max_length: int | None = None,
                 device: str = "cpu", dtype: str = "float32") -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise InvalidInputError("model", model, "must be the path of a trained re-ranker folder")
        for field, value in (("batch_size", batch_size), ("max_length", 1 if max_length is None else max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(field, value, "must be a positive integer")
        if not isinstance(device, str) or not device:
            raise InvalidInputError("device", device, "must be a torch device string such as 'cpu'")
        if dtype not in DTYPES:
            raise InvalidInputError("dtype", dtype, f"expected one of {DTYPES}")
        # how the scores are made is part of the identity, so caches keyed by it never mix two ways
        self.model_id = str(model) + ("" if dtype == "float32" else f"#{dtype}") + (
            "" if max_length is None else f"#max_length={max_length}")
        self.folder = str(model)
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._identity: Any = None
        self._marker: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.folder!r}, max_length={self.max_length}, dtype={self.dtype!r})"

    @property
    def marker(self) -> dict[str, Any]:
        """The training marker (base model, loss, steps, validation metrics); loads the model."""
        self.load()
        return dict(self._marker or {})

    def load(self) -> None:
        """Load the model now (idempotent, thread-safe); refuses a folder not trained by recsieve."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            marker = read_marker(self.folder)
            if self.max_length is None:
                self.max_length = trained_max_length(marker)
            import torch
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(self.folder, max_length=self.max_length, device=self.device,
                                 local_files_only=True, activation_fn=torch.nn.Identity())
            if model.num_labels != 1:
                raise CorruptStoreError(f"{self.folder}: expected a 1-label cross-encoder, got {model.num_labels}")
            model.eval()
            if self.dtype == "bfloat16":
                model.model.to(torch.bfloat16)
            self._identity = torch.nn.Identity()
            self._marker = marker
            self._model = model

    def score(self, context: str, items: Sequence[str]) -> np.ndarray:
        """Raw logits of ``(context, item)`` for each item, ``float32`` of shape ``(len(items),)``."""
        check_pair_input(context, items)
        self.load()
        if not items:
            return np.empty(0, dtype=np.float32)
        pairs = [(context, text) for text in items]
        with self._lock:
            # The activation is passed per call (identity: raw logits); the model's own setting
            # is never changed, so no call can leak a setting into the next.
            raw = self._model.predict(pairs, batch_size=self.batch_size, activation_fn=self._identity,
                                      show_progress_bar=False, convert_to_numpy=True)
        scores = np.ascontiguousarray(np.asarray(raw, dtype=np.float32).reshape(-1))
        return check_scores(scores, len(items))
