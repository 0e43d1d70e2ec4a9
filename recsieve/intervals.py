"""Paired comparisons with a bootstrap interval: the one way recsieve reports that A beats B."""

from __future__ import annotations

from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError

__all__ = ["paired_gain"]


def paired_gain(a: list[float], b: list[float], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``a - b`` over paired per-user scores, with a 95% percentile-bootstrap interval."""
    if len(a) != len(b):
        raise InvalidInputError("a/b", (len(a), len(b)), "paired scores must have the same length")
    if not a:
        return {"mean": None, "ci95": None, "users": 0}
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return {"mean": float(diff.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "users": len(diff)}
