"""Replicated serving on Ray Serve (the ``recsieve[ray]`` extra): ``recsieve serve DIR --replicas N``.

Each replica is a :class:`Replica`: it opens the engine directory (``Engine.open``) and answers
through a Python deployment handle (``handle.recommend.remote(...)``, ``handle.record.remote(...)``)
and through Serve's HTTP ingress:

- ``POST /recommend`` ``{"user_id", "k", "instruction"?, "filter"?, "after_seq"?}`` ->
  ``{"results": [{"item_id", "score", "reason"}, ...]}``;
- ``POST /events`` ``{"events": [{"user_id", "item_id", "kind"?, "ts"?, "weight"?, "text"?}, ...]}``
  -> ``{"recorded": n, "seq": s}`` once the events are journaled (durable);
- bad input -> 400 (an unknown item: 404) with ``{"error": message}``, the message the library
  raises; a journal that cannot be read or written -> 503.

Replicas share the engine's journal, as the processes of one machine do (``journal.sqlite`` in
the directory) or across machines (a Redis stream, the config's ``journal``): a replica records an
event by journaling it, and every replica applies the journal's tail before it answers, so an
acknowledged event is in the very next ``recommend`` on any replica (read-your-writes). ``seq``
is the journal sequence the write reached; a client that passes it back as ``after_seq`` gets an
answer only from a state that includes it, waited for at most ``wait_s`` seconds (then 503 with a
clear error). A model switched with ``use_model(persist=True)`` by any process rewrites the
directory's config, which every replica notices at its next request. A replica that dies is
replaced by Serve; the new one opens the directory (newest snapshot + the journal after it) and
so holds everything acknowledged. With ``cache = "redis"`` the replicas share one result cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsieve.distributed.connect import connect, require_ray
from recsieve.embedding import Embedder
from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError, RecsieveError, StoreError, UnknownItemError
from recsieve.types import Event

__all__ = ["Replica", "ServeReport", "build_app", "serve_directory", "serve_until_interrupted", "WAIT_S", "APP_NAME"]

#: Seconds a request with ``after_seq`` waits for its replica to reach that sequence.
WAIT_S = 10.0
#: The Serve application's name.
APP_NAME = "recsieve"
_RECOMMEND_FIELDS = {"user_id", "k", "instruction", "filter", "after_seq"}
_EVENT_FIELDS = ("user_id", "item_id", "kind", "ts", "weight", "text")


def _after_seq(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidInputError("after_seq", value, "must be a non-negative integer (the seq POST /events returned)")
    return value


def _events(value: Any) -> list[Event]:
    if not isinstance(value, list):
        raise InvalidInputError("events", value, "must be a list of events")
    out = []
    for i, d in enumerate(value):
        if not isinstance(d, dict) or set(d) - set(_EVENT_FIELDS) or not {"user_id", "item_id"} <= set(d):
            raise InvalidInputError(f"events[{i}]", d, f"an object with user_id, item_id and optionally "
                                                      f"{', '.join(_EVENT_FIELDS[2:])}")
        out.append(Event(**d))
    return out


class Replica:
    """One serving replica: an engine over ``directory``, answering requests (see the module docstring).

    ``embedder``: the bi-encoder (default: the config's, loaded in the replica). ``wait_s``: how
    long a request with ``after_seq`` waits for the journal's tail.
    """

    def __init__(self, directory: str, embedder: Embedder | None = None, wait_s: float = WAIT_S) -> None:
        self.engine = Engine.open(directory, embedder=embedder)
        self.wait_s = wait_s
        self.name = _replica_name()

    def recommend(self, user_id: str, k: int = 10, instruction: str | None = None, filter: Any = None,
                  after_seq: int | None = None) -> dict[str, Any]:
        """``{"results": [{"item_id", "score", "reason"}, ...]}`` for a user, from a state that has
        applied the journal up to at least ``after_seq`` (and to its head, as every request does)."""
        after = _after_seq(after_seq)
        if after is not None:  # recommend() applies the tail itself; only a wait needs more
            self.caught_up(after)
        recs = self.engine.recommend(user_id, k, instruction=instruction, filters=filter)
        return {"results": [{"item_id": r.item_id, "score": r.score, "reason": r.reason} for r in recs]}

    def record(self, events: list[dict[str, Any]]) -> dict[str, int]:
        """Journal events (dicts of :class:`~recsieve.types.Event`'s fields); returns
        ``{"recorded": n, "seq": s}``: they are durable, and any replica's state at ``s`` holds them."""
        n = self.engine.record(_events(events))
        return {"recorded": n, "seq": self.engine.applied_seq}

    def state(self) -> dict[str, Any]:
        """Which replica this is and how far it has applied the journal (for operators and tests)."""
        self.engine.catch_up()
        return {"replica": self.name, "applied_seq": self.engine.applied_seq, "model": self.engine.model_version}

    def caught_up(self, after_seq: int | None) -> None:
        """Apply the journal's tail; with ``after_seq``, wait (at most ``wait_s``) until it is applied."""
        deadline = time.monotonic() + self.wait_s
        self.engine.catch_up()
        while after_seq is not None and self.engine.applied_seq < after_seq:
            if time.monotonic() >= deadline:
                raise StoreError(f"after_seq={after_seq}: replica {self.name} has applied the journal up to "
                                 f"{self.engine.applied_seq} and did not reach {after_seq} within {self.wait_s:g} s "
                                 f"(the journal ends at {self.engine.journal.head()})")
            time.sleep(0.01)
            self.engine.catch_up()

    async def __call__(self, request: Any) -> Any:
        """Serve's HTTP ingress: ``POST /recommend``, ``POST /events``, ``GET /state``."""
        import asyncio

        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        headers = {"x-recsieve-replica": self.name}
        try:
            if request.method == "GET" and path == "state":
                return JSONResponse(await asyncio.to_thread(self.state), headers=headers)
            if request.method != "POST" or path not in ("recommend", "events"):
                return JSONResponse({"error": f"{request.method} /{path}: expected POST /recommend, POST /events "
                                              "or GET /state"}, status_code=404, headers=headers)
            body = await request.body()
            try:
                data = json.loads(body)
            except (UnicodeDecodeError, ValueError) as exc:
                raise InvalidInputError("body", body[:80].decode("utf-8", "replace"), f"not JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InvalidInputError("body", data, "must be a JSON object")
            if path == "events":
                if set(data) != {"events"}:
                    raise InvalidInputError("body", sorted(data), 'expected {"events": [...]}')
                return JSONResponse(await asyncio.to_thread(self.record, data["events"]), headers=headers)
            unknown = set(data) - _RECOMMEND_FIELDS
            if unknown or "user_id" not in data:
                raise InvalidInputError("body", sorted(data), f"expected user_id and optionally k, instruction, "
                                                              f"filter, after_seq; unknown: {sorted(unknown)}")
            got = await asyncio.to_thread(self.recommend, data["user_id"], data.get("k", 10), data.get("instruction"),
                                          data.get("filter"), data.get("after_seq"))
            return JSONResponse(got, headers=headers)
        except UnknownItemError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404, headers=headers)
        except InvalidInputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400, headers=headers)
        except RecsieveError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers=headers)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _replica_name() -> str:
    """Serve's id of the replica this runs in (``"local"`` outside Serve)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica (or an older Serve): a plain object
        return "local"


def build_app(directory: str | Path, *, replicas: int = 1, embedder: Embedder | None = None,
              replica_cpus: float = 1.0, wait_s: float = WAIT_S) -> Any:
    """The Serve application: ``replicas`` :class:`Replica` s over ``directory`` (bind it with
    ``serve.run``). Raises :class:`~recsieve.errors.MissingDependencyError` without Ray Serve."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise InvalidInputError("replicas", replicas, "must be a positive integer")
    if isinstance(replica_cpus, bool) or not isinstance(replica_cpus, (int, float)) or replica_cpus <= 0:
        raise InvalidInputError("replica_cpus", replica_cpus, "must be a positive number")
    if not Path(directory).is_dir():
        raise StoreError(f"engine directory {directory} does not exist or is not a directory")
    require_ray("serve")
    from ray import serve

    deployment = serve.deployment(Replica, name="Replica", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": replica_cpus})
    return deployment.bind(str(Path(directory).resolve()), embedder, wait_s)


@dataclass(frozen=True)
class ServeReport:
    """What :func:`serve_directory` started: the handle, and the HTTP address it listens on."""

    handle: Any
    url: str
    replicas: int


def serve_directory(directory: str | Path, *, replicas: int = 1, host: str = "127.0.0.1", port: int = 8000,
                    address: str | None = None, embedder: Embedder | None = None, replica_cpus: float = 1.0,
                    wait_s: float = WAIT_S) -> ServeReport:
    """Run the application on Ray (``address``: as :func:`~recsieve.distributed.connect.connect`;
    ``None`` starts a local Ray) with its HTTP ingress on ``host:port`` (loopback by default);
    returns once every replica is up. ``serve.shutdown()`` stops it."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidInputError("port", port, "must be a TCP port (1-65535)")
    app = build_app(directory, replicas=replicas, embedder=embedder, replica_cpus=replica_cpus, wait_s=wait_s)
    connect(address)
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(app, name=APP_NAME, route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    return ServeReport(handle, f"http://{shown}:{port}", replicas)


def serve_until_interrupted() -> int:
    """Block until Ctrl-C (or SIGTERM's ``KeyboardInterrupt``), then shut Serve down; returns 0."""
    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
