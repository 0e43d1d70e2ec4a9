"""The cross-encoder's speed levers as named re-rankers, so each is measured on its own.

Every lever runs the same trained model (or its distilled student) differently:

========================  ===============================================================
``baseline``              torch fp32, the length the model was trained with
``max_length=N``          torch fp32, pairs truncated to N tokens (less padding and work)
``torch-bf16``            torch, weights and activations in bfloat16
``onnx``                  ONNX Runtime fp32 (length-sorted batches)
``onnx-int8``             ONNX Runtime, int8 dynamic quantisation
``onnx-int8+max_length``  both of the above
``student``               the distilled student (fewer layers, its own shorter length)
``student+onnx-int8``     the student under ONNX Runtime int8
========================  ===============================================================

Scoring only the top-M of recall is the other lever; it is a setting of the engine
(``rerank_n``, and the blend's fitted ``blend_top``), not of the model.
"""

from __future__ import annotations

import os

from recsieve.rerankers.base import Reranker
from recsieve.rerankers.factory import open_cross_encoder

__all__ = ["lever_rerankers"]


def lever_rerankers(model: str | os.PathLike, *, student: str | os.PathLike | None = None,
                    short: int = 64, batch_size: int = 32) -> dict[str, Reranker]:
    """One re-ranker per lever (see the module docstring), keyed by lever name, baseline first.

    ``student``: a distilled student's folder (its levers are left out without one);
    ``short``: the token limit of the shorter-input levers.
    """
    def lever(folder: str | os.PathLike, backend: str = "torch", max_length: int | None = None) -> Reranker:
        return open_cross_encoder(folder, backend=backend, max_length=max_length, batch_size=batch_size)

    levers = {
        "baseline": lever(model),
        f"max_length={short}": lever(model, max_length=short),
        "torch-bf16": lever(model, "torch-bf16"),
        "onnx": lever(model, "onnx"),
        "onnx-int8": lever(model, "onnx-int8"),
        f"onnx-int8+max_length={short}": lever(model, "onnx-int8", short),
    }
    if student is not None:
        levers["student"] = lever(student)
        levers["student+onnx-int8"] = lever(student, "onnx-int8")
    return levers
