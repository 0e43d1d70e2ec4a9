"""recsieve on Ray (the optional ``recsieve[ray]`` extra): distributed index builds.

Nothing here imports Ray until a function that needs it runs; without Ray installed those
functions raise :class:`~recsieve.errors.MissingDependencyError` naming the extra.

- :func:`build_index` (:mod:`recsieve.distributed.build`): an engine directory built on a Ray
  cluster: the catalog read with Ray Data, embedded by a pool of actors, written to a Lance
  dataset, assembled into a directory :meth:`recsieve.Engine.open` reads like any other.
- :func:`connect`, :func:`ray_session` (:mod:`recsieve.distributed.connect`): join a cluster or
  start a local Ray, failing fast with a clear error when no cluster answers.
"""

from recsieve.distributed.build import BuildReport, build_index
from recsieve.distributed.connect import connect, ray_session, require_ray

__all__ = ["BuildReport", "build_index", "connect", "ray_session", "require_ray"]
