"""Opening a trained cross-encoder folder with the backend a config names.

:data:`CE_BACKENDS` are the ways to run one (the engine's ``ce_backend`` setting accepts
exactly these); :func:`open_cross_encoder` builds the matching re-ranker. It sits above both
implementations (:mod:`~recsieve.rerankers.cross_encoder`, :mod:`~recsieve.rerankers.onnx`),
which share the model folder's marker through :mod:`recsieve.rerankers.folder` and never
import each other.
"""

from __future__ import annotations

import os

from recsieve.errors import InvalidInputError
from recsieve.rerankers.base import Reranker
from recsieve.rerankers.cross_encoder import CrossEncoderReranker
from recsieve.rerankers.onnx import OnnxReranker

__all__ = ["CE_BACKENDS", "open_cross_encoder"]

#: Ways to run a trained cross-encoder: torch fp32 / bf16, ONNX Runtime fp32 / int8.
CE_BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")


def open_cross_encoder(model: str | os.PathLike, *, backend: str = "torch", max_length: int | None = None,
                       batch_size: int = 32) -> Reranker:
    """The trained cross-encoder in folder ``model``, run by ``backend`` (one of :data:`CE_BACKENDS`).

    ``max_length``: tokens per pair (``None``: as trained). ONNX backends export the model
    into its folder on first use (:func:`recsieve.rerankers.onnx.export_onnx`).
    """
    if backend not in CE_BACKENDS:
        raise InvalidInputError("backend", backend, f"expected one of {CE_BACKENDS}")
    if backend.startswith("onnx"):
        return OnnxReranker(model, int8=backend == "onnx-int8", max_length=max_length, batch_size=batch_size)
    return CrossEncoderReranker(model, max_length=max_length, batch_size=batch_size,
                                dtype="bfloat16" if backend == "torch-bf16" else "float32")
