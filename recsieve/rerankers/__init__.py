"""Re-rankers: the fine sieve that orders recalled candidates for a user's context.

The protocol (:class:`Reranker`, :func:`check_scores`) and the context rendering are light;
the cross-encoder and its training load torch and sentence-transformers only when imported
(``recsieve.rerankers.cross_encoder``, ``recsieve.rerankers.training``).
"""

from recsieve.rerankers.base import Reranker, check_scores
from recsieve.rerankers.context import ContextEvent, describe_age, render_context
from recsieve.rerankers.cross_encoder import MARKER_FILE, CrossEncoderReranker, read_marker

__all__ = [
    "Reranker",
    "check_scores",
    "ContextEvent",
    "describe_age",
    "render_context",
    "CrossEncoderReranker",
    "MARKER_FILE",
    "read_marker",
]
