"""Replicated serving on Ray Serve (``recsieve/distributed/serve.py``): two replicas over one engine
directory whose journal is a Redis stream answer over HTTP and through the handle; an event posted
through one path is in the next ``recommend`` of either replica; a killed replica loses nothing
acknowledged and its replacement catches up; bad input gets a 4xx with the library's message.
The Ray tests are ``slow`` (a local Ray with ``num_cpus=2`` and Serve take many seconds to start);
the missing-Ray test is fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_config import WordHashEmbedder
from test_journal_redis import redis_base, redis_journal_url  # noqa: F401 (fixtures)

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.errors import RecsieveError

TESTS = Path(__file__).resolve().parent
WORDS = ["red", "blue", "green", "kettle", "teapot", "lamp", "chair", "table", "book", "film"]


def post(url: str, path: str, body: object) -> tuple[int, dict, str]:
    """(status, JSON body, replica) of one HTTP request."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"},
                                 method="POST" if path != "/state" else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), exc.headers
    try:
        got = json.loads(raw)
    except ValueError:  # an error page of Serve's proxy, not of a replica
        got = {"error": raw.decode("utf-8", "replace")}
    return status, got, headers.get("x-recsieve-replica")


def on_each_replica(url: str, path: str, body: object, replicas: int = 2, patience_s: float = 300.0) -> dict[str, tuple]:
    """Send the request until ``replicas`` distinct replicas answered it: {replica: (status, body)}.
    Patient: on a busy machine a replica can fail Serve's health check and be replaced meanwhile."""
    seen: dict[str, tuple] = {}
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        status, got, replica = post(url, path, body)
        if status < 500:
            seen.setdefault(replica, (status, got))
        if len(seen) >= replicas:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"only replicas {sorted(seen)} answered within {patience_s:g} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_base):  # noqa: F811 (the imported fixture)
    """A local Ray (2 CPUs), an engine directory journaled on Redis, and 2 replicas serving it."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from recsieve.distributed.serve import serve_directory

    path = tmp_path_factory.mktemp("serve") / "eng"
    config = EngineConfig(index="flat", recall_n=30, refresh_threads=0, journal=f"{redis_base}?stream=serve")
    with Engine.create(path, config, embedder=WordHashEmbedder()) as eng:
        eng.upsert_items([Item(f"i{n:02d}", title=f"item {n} {WORDS[n % 10]} {WORDS[(n * 3) % 10]}") for n in range(40)])
        eng.save()
    tests_path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    # Serve's proxy must answer its readiness check within 5 s by default: too short on a busy 2-core machine.
    patience = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "120"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": tests_path, **patience}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        report = serve_directory(path, replicas=2, port=port, embedder=WordHashEmbedder(), replica_cpus=0.5)
        yield path, report
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_two_replicas_answer_over_http_and_through_the_handle(served):
    path, report = served
    assert report.url.startswith("http://127.0.0.1:")
    answers = on_each_replica(report.url, "/recommend", {"user_id": "nobody", "k": 5})
    lists = [[r["item_id"] for r in got["results"]] for status, got in answers.values() if status == 200]
    assert len(lists) == 2 and lists[0] == lists[1] and len(lists[0]) == 5
    assert set(answers.popitem()[1][1]["results"][0]) == {"item_id", "score", "reason"}
    via_handle = report.handle.recommend.remote("nobody", 5).result()
    assert [r["item_id"] for r in via_handle["results"]] == lists[0]


@pytest.mark.slow
def test_an_event_is_in_the_next_recommend_on_either_replica(served):
    path, report = served
    for n in range(3):
        user = f"reader-{n}"
        status, first, _ = post(report.url, "/recommend", {"user_id": user, "k": 10})
        clicked = first["results"][0]["item_id"]
        if n % 2:  # through HTTP, or through the handle
            status, ack, _ = post(report.url, "/events", {"events": [{"user_id": user, "item_id": clicked}]})
            assert status == 200, ack
        else:
            ack = report.handle.record.remote([{"user_id": user, "item_id": clicked}]).result()
        assert ack["recorded"] == 1 and ack["seq"] > 0
        for status, got in on_each_replica(report.url, "/recommend", {"user_id": user, "k": 10}).values():
            assert status == 200 and clicked not in [r["item_id"] for r in got["results"]]  # consumed: excluded
        status, got, _ = post(report.url, "/recommend", {"user_id": user, "k": 10, "after_seq": ack["seq"]})
        assert status == 200
    status, got, _ = post(report.url, "/recommend", {"user_id": "x", "after_seq": 10**9})  # never reached
    assert status == 503 and "after_seq=1000000000" in got["error"] and "did not reach" in got["error"]


@pytest.mark.slow
def test_bad_input_gets_a_4xx_with_the_librarys_message(served):
    path, report = served
    with Engine.open(path, embedder=WordHashEmbedder()) as eng:
        def message(call) -> str:
            try:
                call()
            except RecsieveError as exc:
                return str(exc)
            raise AssertionError("no error")

        cases = [
            ("/recommend", {"user_id": "u", "k": 0}, 400, message(lambda: eng.recommend("u", 0))),
            ("/recommend", {"user_id": "u", "filter": "price <"}, 400, message(lambda: eng.recommend("u", filters="price <"))),
            ("/events", {"events": [{"user_id": "u", "item_id": "nope"}]}, 404,
             message(lambda: eng.record([Event("u", "nope")]))),
            ("/events", {"events": [{"user_id": "u", "item_id": "i01", "kind": "stare"}]}, 400,
             message(lambda: Event("u", "i01", "stare"))),
        ]
        head = eng.journal.head()
    for path_, body, code, expected in cases:
        status, got, _ = post(report.url, path_, body)
        assert (status, got["error"]) == (code, expected)
    status, got, _ = post(report.url, "/recommend", b"{not json")
    assert status == 400 and got["error"].startswith("body=")
    status, got, _ = post(report.url, "/recommend", {"user": "u"})
    assert status == 400 and "user_id" in got["error"]
    with Engine.open(path, embedder=WordHashEmbedder()) as eng:
        assert eng.journal.head() == head  # nothing was journaled


@pytest.mark.slow
def test_a_killed_replica_loses_nothing_acknowledged_and_is_replaced(served):
    import ray
    from ray.util import list_named_actors

    path, report = served
    acked: list[str] = []

    def record(n: int) -> None:
        status, got, _ = post(report.url, "/events", {"events": [{"user_id": f"k{n % 3}", "item_id": f"i{n % 40:02d}",
                                                                  "text": f"kill-{n}"}]})
        if status == 200:  # only an answered write was acknowledged
            acked.append(f"kill-{n}")

    before = {r for r in on_each_replica(report.url, "/state", {})}
    for n in range(10):
        record(n)
    victim = next(a for a in list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::"))
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    for n in range(10, 30):
        try:
            record(n)
        except (urllib.error.URLError, ConnectionError):
            pass  # a request in flight to the dead replica: not acknowledged
    deadline = time.monotonic() + 300
    states: dict[str, tuple] = {}
    while time.monotonic() < deadline:
        states = on_each_replica(report.url, "/state", {})
        if set(states) - before:
            break
        time.sleep(1)
    new = set(states) - before
    assert new, f"Serve did not replace the killed replica (replicas {sorted(states)}, before {sorted(before)})"
    with Engine.open(path, embedder=WordHashEmbedder()) as fresh:
        texts = [e.text for e in fresh.journal.events() if (e.text or "").startswith("kill-")]
        head = fresh.journal.head()
        assert set(acked) <= set(texts) and len(texts) == len(set(texts))
    for replica in new:
        assert states[replica][1]["applied_seq"] == head  # the replacement caught up from snapshot + stream
    assert acked[:10] == [f"kill-{n}" for n in range(10)]  # before the kill every write was answered
    answers = on_each_replica(report.url, "/recommend", {"user_id": "k0", "k": 10}).values()
    lists = [[r["item_id"] for r in got["results"]] for status, got in answers if status == 200]
    assert len(lists) == 2 and lists[0] == lists[1]  # the replacement serves the same state as the survivor


def test_without_ray_serving_names_the_extra(tmp_path):
    path = tmp_path / "eng"
    Engine.create(path, EngineConfig(index="flat", refresh_threads=0), embedder=WordHashEmbedder()).close()
    code = (
        "import contextlib, io, json, sys\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from recsieve.distributed.serve import build_app\n"
        "from recsieve.errors import MissingDependencyError\n"
        "from recsieve.cli import main\n"
        "try:\n"
        f"    build_app({str(path)!r}, replicas=2)\n"
        "    error = None\n"
        "except MissingDependencyError as exc:\n"
        "    error = str(exc)\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        f"    code = main(['serve', {str(path)!r}, '--replicas', '2'])\n"
        "print(json.dumps({'error': error, 'code': code, 'stderr': err.getvalue()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["error"] is not None and "pip install 'recsieve[ray]'" in got["error"]
    assert got["code"] == 2 and got["stderr"].startswith("recsieve serve: error:") and "recsieve[ray]" in got["stderr"]


@pytest.mark.slow
def test_a_model_switch_reaches_every_replica(served):
    """A head trained in another process and switched to with ``use_model(persist=True)`` is
    what both replicas serve next: the same version, and the same list as the trainer's engine."""
    from recsieve.training import train_engine_ranker

    path, report = served
    with Engine.open(path, embedder=WordHashEmbedder()) as eng:
        events = [Event(f"m{u}", f"i{(u % 4) * 10 + (u * 7 + t * 3) % 10:02d}", "click", ts=1e6 + 60.0 * (u * 8 + t))
                  for u in range(60) for t in range(6)]
        eng.record(events)
        folder = path / "models" / "switched"
        train_engine_ranker(eng, folder, users=None, steps_per_user=1, progress=False)
        before = {got["model"] for _, got in on_each_replica(report.url, "/state", {}).values()}
        eng.use_model(folder, persist=True)
        version = eng.model_version
        expected = [r.item_id for r in eng.recommend("m5", 10)]
    assert version not in before
    deadline, states = time.monotonic() + 120, {}
    while time.monotonic() < deadline:
        states = on_each_replica(report.url, "/state", {})
        if all(got["model"] == version for _, got in states.values()):
            break
        time.sleep(0.5)
    assert {got["model"] for _, got in states.values()} == {version}
    for status, got in on_each_replica(report.url, "/recommend", {"user_id": "m5", "k": 10}).values():
        assert status == 200 and [r["item_id"] for r in got["results"]] == expected
