"""The one place where vectors are coerced, checked and L2-normalised.

Every vector that crosses a stage boundary is ``float32``, C-contiguous, shape ``(n, dim)``
and L2-normalised, so that inner product is cosine similarity.
"""

from __future__ import annotations

import numpy as np

from recsieve.errors import InvalidInputError

__all__ = ["as_matrix", "normalize"]


def as_matrix(x: object, dim: int | None = None, field: str = "vectors") -> np.ndarray:
    """Coerce ``x`` to a float32 C-contiguous ``(n, dim)`` matrix of finite values.

    A single vector of shape ``(dim,)`` becomes ``(1, dim)``. Raises
    :class:`InvalidInputError` naming ``field`` on a wrong shape, dimension or a NaN/inf.
    """
    try:
        arr = np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(field, type(x).__name__, f"not convertible to float32: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInputError(field, arr.shape, "must have shape (n, dim)")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"{field}.dim", arr.shape[1], f"expected dimension {dim}")
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise InvalidInputError(f"{field}[{bad}]", "NaN/inf", "vectors must be finite")
    return arr


def normalize(x: object, dim: int | None = None, field: str = "vectors") -> np.ndarray:
    """Return ``x`` as checked float32 rows scaled to unit L2 norm (a new array).

    A zero vector has no direction, so it is an error rather than a silent NaN.
    """
    arr = as_matrix(x, dim, field)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.size and (norms <= 1e-12).any():
        bad = int(np.argwhere(norms[:, 0] <= 1e-12)[0][0])
        raise InvalidInputError(f"{field}[{bad}]", "zero vector", "cannot normalise a zero vector")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)
