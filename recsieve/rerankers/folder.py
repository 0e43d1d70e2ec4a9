"""The trained model folder: the marker that says recsieve trained it, and what it records.

A folder written by :func:`recsieve.rerankers.training.train_reranker` (or
:func:`~recsieve.rerankers.distill.distill_reranker`) carries :data:`MARKER_FILE`
(``recsieve_reranker.json``: format, base model, loss, steps, ``max_length``, validation
metrics). A folder without it -- for instance the bi-encoder that training starts from, which
``CrossEncoder`` would happily load with a freshly initialised, meaningless head -- is refused
by :func:`read_marker` with :class:`~recsieve.errors.ModelNotTrainedError`, so an untrained
head is never served. Every backend (:mod:`~recsieve.rerankers.cross_encoder`,
:mod:`~recsieve.rerankers.onnx`) reads the folder through this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recsieve.errors import CorruptStoreError, ModelNotTrainedError, StoreError
from recsieve.storage import read_json

__all__ = ["MARKER_FILE", "MARKER_FORMAT", "DEFAULT_MAX_LENGTH", "read_marker", "trained_max_length"]

#: Name of the file that marks a folder as a cross-encoder trained by recsieve.
MARKER_FILE = "recsieve_reranker.json"
#: Version of the marker's layout.
MARKER_FORMAT = 1
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


def trained_max_length(marker: dict[str, Any]) -> int:
    """The token limit the model was trained with (from its marker), else :data:`DEFAULT_MAX_LENGTH`.

    Serving the length training saw avoids skew.

    >>> trained_max_length({"max_length": 128}), trained_max_length({})
    (128, 256)
    """
    trained = marker.get("max_length")
    ok = isinstance(trained, int) and not isinstance(trained, bool) and trained > 0
    return trained if ok else DEFAULT_MAX_LENGTH
