"""The serving half of the ``ray`` bench section: requests to a Ray Serve deployment of
:mod:`recsieve.distributed.serve` over its HTTP ingress, from this process.

- :func:`request_mix`: the seeded list of ``POST /recommend`` bodies every serving point draws
  from (known users, new users, known users with a plain-words instruction).
- :func:`serving_load`: requests/s and latency of concurrent clients (one keep-alive connection
  each, a closed loop) for a few seconds, with how the requests spread over the replicas.
- :func:`visibility`: event -> visible on another replica: ``POST /events`` through the ingress
  (the answer names the replica that journaled it), then requests until a *different* replica
  answers with the event reflected; three probes in turn: ``recommend`` (the clicked item is
  gone from the user's list: consumed items are excluded), ``recommend`` with ``after_seq``,
  and ``GET /state`` (``applied_seq`` at or past the event's ``seq``).

Nothing here imports Ray: it speaks HTTP to an address.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from recsieve.bench.common import WISHES, SyntheticUsers, latency_summary, throughput
from recsieve.errors import ClusterUnavailableError, StoreError

__all__ = ["PROBES", "HttpClient", "request_mix", "serving_load", "visibility", "warm_up"]

#: The visibility probes, taken in turn.
PROBES = ("recommend", "recommend_after_seq", "state")
#: Shares of the request mix: known users, new users (cold start), known users with an instruction.
MIX = {"known_user": 0.7, "new_user": 0.15, "instruction": 0.15}
_K = 10


class HttpClient:
    """One keep-alive HTTP connection to the Serve ingress at ``url``; reconnects once on a dropped one."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        self._host, self._port, self._timeout = parts.hostname, parts.port, timeout_s
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any], str | None]:
        """``(status, JSON body, replica)`` of one request (``replica``: the ``x-recsieve-replica`` header)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        for attempt in (0, 1):
            try:
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
                if attempt:
                    raise
        try:
            got = json.loads(raw)
        except ValueError:  # an error page of Serve's proxy, not of a replica
            got = {"error": raw.decode("utf-8", "replace")}
        return resp.status, got, resp.getheader("x-recsieve-replica")

    def close(self) -> None:
        self._conn.close()


def request_mix(pop: SyntheticUsers, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` ``POST /recommend`` bodies drawn with ``seed`` in the shares of :data:`MIX`; new users
    are named ``new-...`` and never recorded, so they take the cold-start path."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        draw = rng.random()
        if draw < MIX["known_user"]:
            out.append({"user_id": rng.choice(pop.users), "k": _K})
        elif draw < MIX["known_user"] + MIX["new_user"]:
            out.append({"user_id": f"new-{seed}-{i:06d}", "k": _K})
        else:
            out.append({"user_id": rng.choice(pop.users), "k": _K, "instruction": rng.choice(WISHES)})
    return out


def warm_up(url: str, mix: list[dict[str, Any]], replicas: int, patience_s: float = 300.0) -> int:
    """Send requests of the mix until ``replicas`` replicas have each answered 10, 3 of them with an
    instruction (a replica loads the bi-encoder on its first one); returns the requests sent."""
    client = HttpClient(url)
    total: Counter[str] = Counter()
    worded: Counter[str] = Counter()
    deadline = time.monotonic() + patience_s
    sent = 0
    try:
        while (len(total) < replicas or min(total.values()) < 10
               or min(worded.get(r, 0) for r in total) < 3):
            if time.monotonic() > deadline:
                raise ClusterUnavailableError(f"warm-up: only replicas {dict(total)} answered within {patience_s:g} s "
                                              f"(wanted {replicas})")
            body = mix[sent % len(mix)]
            status, _, replica = client.call("POST", "/recommend", body)
            sent += 1
            if status == 200 and replica:
                total[replica] += 1
                worded[replica] += "instruction" in body
    finally:
        client.close()
    return sent


def serving_load(url: str, mix: list[dict[str, Any]], clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """Requests/s and latency of ``clients`` concurrent clients asking ``POST /recommend`` with
    bodies drawn from ``mix`` (client ``i`` draws with seed ``seed * 1000 + i``: the same requests
    for every deployment measured) for ``seconds``; ``per_replica``: answers per replica, most first;
    ``errors``: answers that were not 200 (counted in requests/s and latency), the first one's text."""
    local = threading.local()
    lock = threading.Lock()
    opened: list[HttpClient] = []
    per_replica: Counter[str] = Counter()
    errors: list[str] = []

    def call(rng: random.Random) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = HttpClient(url)
            with lock:
                opened.append(client)
        status, got, replica = client.call("POST", "/recommend", mix[rng.randrange(len(mix))])
        with lock:
            per_replica[replica or "?"] += 1
            if status != 200:
                errors.append(f"{status}: {got.get('error', got)}"[:300])

    try:
        row = throughput(call, clients, seconds, seed)
    finally:
        for client in opened:
            client.close()
    row["clients"] = row.pop("threads")
    row["per_replica"] = sorted(per_replica.values(), reverse=True)
    row["errors"] = len(errors)
    if errors:
        row["first_error"] = errors[0]
    return row


def _reflected(probe: str, got: dict[str, Any], clicked: str, seq: int) -> bool:
    if probe == "state":
        return got["applied_seq"] >= seq
    return clicked not in [r["item_id"] for r in got["results"]]


def visibility(url: str, samples: int, seed: int, patience_s: float = 60.0) -> dict[str, Any]:
    """Event -> visible on another replica, ``samples`` times (see the module docstring): per probe,
    the time from the start of ``POST /events`` to the end of the first answer from a replica other
    than the one that journaled the event that reflects it. ``stale_answers``: answers from another
    replica that did *not* reflect an acknowledged event (read-your-writes says 0)."""
    client = HttpClient(url)
    visible: dict[str, list[float]] = {p: [] for p in PROBES}
    polls: dict[str, list[int]] = {p: [] for p in PROBES}
    record_s: list[float] = []
    round_trip_s: list[float] = []
    same_replica = stale = 0
    try:
        for i in range(samples):
            probe, user = PROBES[i % len(PROBES)], f"vis-{seed}-{i:05d}"
            status, first, _ = client.call("POST", "/recommend", {"user_id": user, "k": _K})
            if status != 200 or not first["results"]:
                raise StoreError(f"visibility: recommend for a new user answered {status}: {first}")
            clicked = first["results"][0]["item_id"]
            t0 = time.perf_counter()
            status, ack, writer = client.call("POST", "/events", {"events": [{"user_id": user, "item_id": clicked}]})
            record_s.append(time.perf_counter() - t0)
            if status != 200:
                raise StoreError(f"visibility: POST /events answered {status}: {ack}")
            body: dict[str, Any] = {"user_id": user, "k": _K}
            if probe == "recommend_after_seq":
                body["after_seq"] = ack["seq"]
            n = 0
            while True:
                t = time.perf_counter()
                status, got, replica = (client.call("GET", "/state") if probe == "state"
                                        else client.call("POST", "/recommend", body))
                round_trip_s.append(time.perf_counter() - t)
                n += 1
                if status == 200 and replica != writer:
                    if _reflected(probe, got, clicked, ack["seq"]):
                        visible[probe].append(time.perf_counter() - t0)
                        polls[probe].append(n)
                        break
                    stale += 1
                elif status == 200:
                    same_replica += 1
                if time.perf_counter() - t0 > patience_s:
                    raise StoreError(f"visibility: no other replica than {writer} reflected seq {ack['seq']} "
                                     f"within {patience_s:g} s ({n} requests)")
    finally:
        client.close()
    return {
        "samples": samples,
        "probes": {p: {**latency_summary(visible[p]), "requests_mean": float(np.mean(polls[p]))}
                   for p in PROBES if visible[p]},
        "record_ms": latency_summary(record_s),
        "round_trip_ms": latency_summary(round_trip_s),
        "answers_from_the_writing_replica": same_replica,
        "stale_answers": stale,
        "what": "start of POST /events -> end of the first answer from another replica than the one that "
                "journaled the event that reflects it; the probes in turn: recommend (the clicked item has "
                "left the user's list), recommend with after_seq, GET /state (applied_seq >= seq); requests "
                "sent back to back by one client, no other load",
    }
