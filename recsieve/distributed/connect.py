"""Connecting to Ray: the one place the distributed code imports it and starts or joins a cluster.

Ray is an optional extra (``pip install 'recsieve[ray]'``): nothing in the default install imports
it, and every Ray path calls :func:`require_ray` first, which says what to install when it is
missing. :func:`connect` joins a cluster at an address (after checking, with a short timeout,
that something answers there: ``ray.init`` itself waits minutes on an address where nothing
listens) or starts a local instance; :func:`ray_session` does the same for the length of a
``with`` block and leaves Ray as it found it.

Addresses: ``None`` starts a local instance (or joins the one ``ray.init`` finds by itself, e.g.
through ``RAY_ADDRESS``); ``"auto"`` joins the cluster started on this machine with ``ray start``;
``HOST:PORT`` joins the cluster whose head listens there (``ray start --head`` prints it);
``ray://HOST:PORT`` joins through the Ray Client.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType

from recsieve.errors import ClusterUnavailableError, InvalidInputError, MissingDependencyError

__all__ = ["CONNECT_TIMEOUT_S", "RAY_EXTRA", "require_ray", "check_reachable", "connect", "ray_session"]

#: Seconds to wait for a cluster's head to answer before giving up.
CONNECT_TIMEOUT_S = 5.0
#: What to install for the Ray paths.
RAY_EXTRA = "pip install 'recsieve[ray]'"


def require_ray(*submodules: str) -> ModuleType:
    """The ``ray`` module, with ``ray.<submodule>`` for each name given imported too (``"data"``,
    ``"serve"``, ``"train"``); :class:`MissingDependencyError` naming the extra when it is not
    installed."""
    try:
        ray = importlib.import_module("ray")
        for name in submodules:
            importlib.import_module(f"ray.{name}")
    except ImportError as exc:
        raise MissingDependencyError(
            f"this needs Ray ({', '.join(f'ray.{s}' for s in submodules) or 'ray'}), which is not installed: "
            f"{RAY_EXTRA} ({exc})"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(
            "address", address, "expected HOST:PORT, ray://HOST:PORT or 'auto' (or none: a local Ray instance)"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ClusterUnavailableError` unless something accepts a TCP connection at the
    ``HOST:PORT`` (or ``ray://HOST:PORT``) ``address`` within ``timeout_s`` seconds."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterUnavailableError(
            f"address={address!r}: no Ray cluster answers there within {timeout_s:g} s ({exc}); start one with "
            "`ray start --head` and give the address it prints, or give no address to start a local Ray"
        ) from None


def connect(address: str | None = None, *, num_cpus: int | None = None,
            timeout_s: float = CONNECT_TIMEOUT_S, runtime_env: Mapping[str, object] | None = None) -> bool:
    """Connect this process to Ray (see the module docstring for ``address``); returns whether it
    connected now (``False``: it was connected already, and stays as it was).

    ``num_cpus``: CPUs of a local instance started here (``address=None``); a cluster has its own.
    ``runtime_env``: Ray's runtime environment for this connection's workers (e.g. ``env_vars``).
    Raises :class:`MissingDependencyError` without Ray, :class:`ClusterUnavailableError` when no
    cluster answers at ``address``, :class:`InvalidInputError` for a malformed address.
    """
    ray = require_ray()
    if address is not None and not isinstance(address, str):
        raise InvalidInputError("address", address, "must be a string")
    if address is not None and num_cpus is not None:
        raise InvalidInputError("num_cpus", num_cpus, "only for a local Ray started here; a cluster has its own CPUs")
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise InvalidInputError("num_cpus", num_cpus, "must be a positive integer")
    if address not in (None, "auto"):
        check_reachable(address, timeout_s)
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=dict(runtime_env or {}) or None)
        else:
            ray.init(address=address, runtime_env=dict(runtime_env or {}) or None)
    except ConnectionError as exc:
        raise ClusterUnavailableError(f"address={address!r}: cannot join a Ray cluster there ({exc})") from None
    except Exception as exc:  # Ray raises a bare Exception when a local node does not start in its 30 s
        ray.shutdown()  # stops what was started of it
        where = "a local Ray instance" if address is None else f"address={address!r}: Ray"
        raise ClusterUnavailableError(f"{where} did not start ({exc})") from None
    return True


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                timeout_s: float = CONNECT_TIMEOUT_S,
                runtime_env: Mapping[str, object] | None = None) -> Iterator[ModuleType]:
    """``with ray_session(address) as ray:`` Ray connected as :func:`connect` does; a connection
    made here is shut down when the block ends, one that existed before is left alone."""
    started = connect(address, num_cpus=num_cpus, timeout_s=timeout_s, runtime_env=runtime_env)
    ray = require_ray()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
