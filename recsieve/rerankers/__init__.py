"""Re-rankers: the fine sieve that orders recalled candidates for a user's context.

The protocol (:class:`Reranker`, :func:`check_scores`) and the context rendering are light;
the cross-encoder and its training load torch and sentence-transformers only when imported
(``recsieve.rerankers.cross_encoder``, ``recsieve.rerankers.training``). A trained model
folder's marker is read by ``recsieve.rerankers.folder``; ``recsieve.rerankers.factory``
opens a folder with a named backend (torch, torch-bf16, onnx, onnx-int8).
"""

from recsieve.rerankers.base import Reranker, check_scores
from recsieve.rerankers.context import ContextEvent, describe_age, render_context
from recsieve.rerankers.cross_encoder import CrossEncoderReranker
from recsieve.rerankers.factory import CE_BACKENDS, open_cross_encoder
from recsieve.rerankers.folder import MARKER_FILE, read_marker

__all__ = [
    "Reranker",
    "check_scores",
    "ContextEvent",
    "describe_age",
    "render_context",
    "CrossEncoderReranker",
    "CE_BACKENDS",
    "open_cross_encoder",
    "MARKER_FILE",
    "read_marker",
]
