"""Near-line refresher: coalescing, bounded queue, failures, clean shutdown (no thread leaks)."""

import threading
import time

from recsieve.engine.nearline import NearlineRefresher


def test_burst_of_one_user_coalesces():
    gate = threading.Event()
    calls = []

    def compute(user):
        gate.wait(5)
        calls.append(user)

    r = NearlineRefresher(compute, threads=1)
    for _ in range(50):
        r.submit("u1")
    r.submit("u2")
    gate.set()
    assert r.wait_idle(5)
    assert sorted(calls) == ["u1", "u2"]
    s = r.stats()
    assert s["coalesced"] == 49 and s["done"] == 2 and s["queue"] == 0 and "latency_p95_ms" in s
    r.close()


def test_bounded_queue_drops_and_failures_do_not_kill_workers():
    gate = threading.Event()
    seen = []

    def compute(user):
        gate.wait(5)
        if user == "bad":
            raise RuntimeError("boom")
        seen.append(user)

    r = NearlineRefresher(compute, threads=2, max_queue=3)
    accepted = [r.submit(u) for u in ["bad", "a", "b", "c", "d"]]
    assert accepted.count(False) == 2
    gate.set()
    assert r.wait_idle(5)
    assert r.stats()["failed"] == 1 and r.stats()["dropped"] == 2
    assert r.submit("e") and r.wait_idle(5) and "e" in seen
    r.close()


def test_close_cancels_or_drains_and_joins_threads():
    before = threading.active_count()
    done = []
    r = NearlineRefresher(lambda u: (time.sleep(0.05), done.append(u)), threads=2)
    for i in range(20):
        r.submit(f"u{i}")
    r.close(drain=False)
    assert len(done) < 20
    assert not r.submit("late")
    r2 = NearlineRefresher(lambda u: done.append(u), threads=2)
    for i in range(5):
        r2.submit(f"v{i}")
    r2.close(drain=True)
    assert {f"v{i}" for i in range(5)} <= set(done)
    assert threading.active_count() == before
