"""A re-ranker over a cross-encoder trained by recsieve (sentence-transformers ``CrossEncoder``).

The model is a folder written by :func:`recsieve.rerankers.training.train_reranker`. That
folder carries a marker file (``recsieve_reranker.json``: base model, loss, steps, validation
metrics); a folder without it -- for instance the bi-encoder that training starts from, which
``CrossEncoder`` would happily load with a freshly initialised, meaningless head -- is refused
with :class:`~recsieve.errors.ModelNotTrainedError`. An untrained head is never served.

Construction is cheap; the model loads on first use (or :meth:`CrossEncoderReranker.load`),
once, under a lock. Scores are the raw logits, ``float32``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import CorruptStoreError, InvalidInputError, ModelNotTrainedError, StoreError
from recsieve.rerankers.base import Reranker, check_pair_input, check_scores
from recsieve.storage import read_json

__all__ = ["CrossEncoderReranker", "MARKER_FILE", "MARKER_FORMAT", "DEFAULT_MAX_LENGTH", "DTYPES", "read_marker",
           "open_cross_encoder", "BACKENDS"]

#: Ways to run a trained cross-encoder: torch fp32 / bf16, ONNX Runtime fp32 / int8.
BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")

#: Name of the file that marks a folder as a cross-encoder trained by recsieve.
MARKER_FILE = "recsieve_reranker.json"
#: Version of the marker's layout.
MARKER_FORMAT = 1
#: Number formats a cross-encoder can run in.
DTYPES = ("float32", "bfloat16")
#: Token limit of a (context, item) pair when neither the caller nor the marker gives one.
DEFAULT_MAX_LENGTH = 256


def read_marker(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the training marker of a model folder.

    Raises :class:`~recsieve.errors.ModelNotTrainedError` when ``path`` is not a folder or holds
    no marker (not trained by recsieve), :class:`~recsieve.errors.CorruptStoreError` when the
    marker is unreadable or not recsieve's.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotTrainedError(
            f"no trained re-ranker at {str(folder)!r}: not a folder; train one with "
            "`recsieve train-reranker` (recsieve.rerankers.training.train_reranker)"
        )
    marker_path = folder / MARKER_FILE
    if not marker_path.is_file():
        raise ModelNotTrainedError(
            f"{str(folder)!r} has no {MARKER_FILE}: it is not a re-ranker trained by recsieve "
            "(an untrained classification head is never served); train one with `recsieve train-reranker`"
        )
    try:
        marker = read_json(marker_path, "re-ranker marker")
    except StoreError as exc:
        raise CorruptStoreError(str(exc)) from None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise CorruptStoreError(
            f"{marker_path}: not a recsieve re-ranker marker of format {MARKER_FORMAT} "
            f"(got {marker.get('format') if isinstance(marker, dict) else type(marker).__name__!r})"
        )
    return marker


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
                trained = marker.get("max_length")
                ok = isinstance(trained, int) and not isinstance(trained, bool) and trained > 0
                self.max_length = trained if ok else DEFAULT_MAX_LENGTH
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


def open_cross_encoder(model: str | os.PathLike, *, backend: str = "torch", max_length: int | None = None,
                       batch_size: int = 32) -> Reranker:
    """The trained cross-encoder in folder ``model``, run by ``backend`` (one of :data:`BACKENDS`).

    ``max_length``: tokens per pair (``None``: as trained). ONNX backends export the model
    into its folder on first use (:func:`recsieve.rerankers.onnx.export_onnx`).
    """
    if backend not in BACKENDS:
        raise InvalidInputError("backend", backend, f"expected one of {BACKENDS}")
    if backend.startswith("onnx"):
        from recsieve.rerankers.onnx import OnnxReranker

        return OnnxReranker(model, int8=backend == "onnx-int8", max_length=max_length, batch_size=batch_size)
    return CrossEncoderReranker(model, max_length=max_length, batch_size=batch_size,
                                dtype="bfloat16" if backend == "torch-bf16" else "float32")
