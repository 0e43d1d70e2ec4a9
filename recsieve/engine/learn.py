"""Deprecated alias of :mod:`recsieve.training.learn` (kept for one release; import from there).

Nothing in the engine imports this module: it exists only so that old imports keep working.
"""

from __future__ import annotations

import warnings

from recsieve.training.learn import Learner, learn

__all__ = ["learn", "Learner"]

warnings.warn("recsieve.engine.learn moved to recsieve.training.learn; this alias goes in the next release",
              DeprecationWarning, stacklevel=2)
