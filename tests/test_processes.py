"""Many processes, one engine directory: web workers, an ingest job and a trainer share it.

Real processes (``subprocess`` + ``sys.executable``) each open the directory with a small hashing
embedder; a child is driven by JSON commands on its stdin and answers on its stdout. The journal
assigns sequence numbers, every process applies the journal's tail before it answers, and a file
lock makes snapshots and model switches single-writer (``recsieve/engine/{journal,store}.py``).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_config import WordHashEmbedder
from test_journal_redis import journal_url, open_journal, redis_base, redis_journal_url  # noqa: F401 (fixtures)

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.engine.journal import EventRecord, ItemOp, Journal, network_filesystem
from recsieve.engine.ranker import RankingHead
from recsieve.errors import IncompatibleVersionError, StoreError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CONFIG = EngineConfig(index="flat", recall_n=30, refresh_threads=0)
WORDS = ["red", "blue", "green", "kettle", "teapot", "lamp", "chair", "table", "book", "film", "song", "game"]

CHILD = textwrap.dedent(
    """
    import json, random, sys, time
    sys.path.insert(0, sys.argv[2])
    from test_config import WordHashEmbedder
    from recsieve import Engine, Event, Item

    WORDS = WORDS_HERE
    eng = Engine.open(sys.argv[1], embedder=WordHashEmbedder())

    def say(obj):
        print(json.dumps(obj), flush=True)

    say({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "write":  # events and new items for `seconds`, one acknowledgement line per write
            tag, rng, i = cmd["tag"], random.Random(cmd["seed"]), 0
            users = [f"{tag}-u{j}" for j in range(3)] + ["shared-0", "shared-1"]
            end = time.monotonic() + cmd["seconds"]
            while time.monotonic() < end:
                if rng.random() < 0.25:
                    item_id = f"{tag}-item-{i}"
                    eng.upsert_items([Item(item_id, title=f"{tag} gadget {i} {rng.choice(WORDS)} {rng.choice(WORDS)}")])
                    print("ACK item", item_id, flush=True)
                else:
                    user, item = rng.choice(users), rng.choice([it.id for it in eng.catalog])
                    eng.record(Event(user, item, "click", text=f"{tag}-e{i}"))
                    print("ACK ev", f"{tag}-e{i}", flush=True)
                if cmd.get("save_every") and i % cmd["save_every"] == cmd["save_every"] - 1:
                    eng.save()
                i += 1
            say({"done": i})
        elif op == "state":
            eng.catch_up()
            say({
                "applied_seq": eng.stats()["applied_seq"],
                "rows": {it.id: eng.catalog.row(it.id) for it in eng.catalog},
                "users": {u: [v.version, sorted(v.consumed)] for u in cmd["users"] if (v := eng.users.get(u))},
                "lists": {u: [r.item_id for r in eng.recommend(u, 10)] for u in cmd["users"]},
            })
        elif op == "recommend":
            recs = eng.recommend(cmd["user"], cmd.get("k", 10))
            view = eng.users.get(cmd["user"])
            say({"items": [r.item_id for r in recs], "version": 0 if view is None else view.version,
                 "model": eng.model_version})
        elif op == "exit":
            break
    eng.close()
    """
).replace("WORDS_HERE", repr(WORDS))


class Child:
    """A process holding the engine open, driven by JSON commands."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(TESTS)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = 60.0) -> dict:
        """The next JSON line (acknowledgement lines before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"child exited: {''.join(self.stderr)[-3000:]}"
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.send(**cmd)
        return self.reply()

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return out
            if line is not None:
                out.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="exit")
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def acks(lines: list[str], kind: str) -> list[str]:
    """Whole acknowledgement lines only (a line cut short by a kill was never acknowledged)."""
    return [m.group(1) for line in lines if (m := re.fullmatch(rf"ACK {kind} (\S+)\n", line))]


@pytest.fixture
def directory(tmp_path: Path, journal_url: str) -> Path:  # noqa: F811 (the imported fixture)
    """An engine directory journaled in ``journal.sqlite`` or on a Redis stream (each test runs on both)."""
    path = tmp_path / "eng"
    eng = Engine.create(path, CONFIG.replace(journal=journal_url), embedder=WordHashEmbedder())
    eng.upsert_items([Item(f"base-{i:03d}", title=f"base item {i} {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}")
                      for i in range(60)])
    eng.save()
    eng.close()
    return path


@pytest.fixture
def children(directory: Path):
    started: list[Child] = []

    def start(n: int) -> list[Child]:
        new = [Child(directory) for _ in range(n)]
        started.extend(new)
        for c in new:
            assert c.reply(120).get("ready")
        return new

    yield start
    for c in started:
        c.close()


def test_four_processes_write_at_once_one_killed_all_converge(directory, children):
    procs = children(4)
    for k, c in enumerate(procs):
        c.send(op="write", tag=f"p{k}", seed=k, seconds=3.0, save_every=25 if k == 0 else 0)
    time.sleep(1.5)
    victim = procs[3]
    os.kill(victim.proc.pid, signal.SIGKILL)  # mid-write: it writes back to back
    victim.proc.wait()
    lines = {k: [] for k in range(4)}
    for k, c in enumerate(procs[:3]):
        while True:
            line = c.lines.get(timeout=60)
            assert line is not None, "".join(c.stderr)[-3000:]
            if line.startswith("{"):
                assert "done" in json.loads(line)
                break
            lines[k].append(line)
        assert not any("Error" in e for e in c.stderr), "".join(c.stderr)[-3000:]
    time.sleep(0.2)
    lines[3] = victim.drain()
    acked_events = {k: acks(lines[k], "ev") for k in range(4)}
    acked_items = {k: acks(lines[k], "item") for k in range(4)}
    assert all(acked_events.values()) and acked_items[0], "every writer acknowledged writes"
    assert acked_events[3] or acked_items[3], "the victim was killed before it wrote anything"

    fresh = Engine.open(directory, embedder=WordHashEmbedder())
    try:
        journaled = Counter(e.text for e in fresh.journal.events())
        assert max(journaled.values()) == 1, "an event was journaled twice"
        expected = {t for k in range(4) for t in acked_events[k]}
        assert expected <= set(journaled), "an acknowledged event was lost"
        extra = set(journaled) - expected
        # only the victim's write in flight at the kill may be durable without its acknowledgement
        assert all(t.startswith("p3-e") for t in extra) and len(extra) <= 1, extra
        items = {it.id for it in fresh.catalog}
        acked = {i for k in range(4) for i in acked_items[k]}
        assert acked <= items and all(i.startswith("p3-") for i in items - acked - {f"base-{i:03d}" for i in range(60)})
        users = [f"p{k}-u{j}" for k in range(4) for j in range(3)] + ["shared-0", "shared-1"]
        per_user = Counter(e.user_id for e in fresh.journal.events())
        mine = {"applied_seq": fresh.stats()["applied_seq"],
                "rows": {it.id: fresh.catalog.row(it.id) for it in fresh.catalog},
                "users": {u: [v.version, sorted(v.consumed)] for u in users if (v := fresh.users.get(u))},
                "lists": {u: [r.item_id for r in fresh.recommend(u, 10)] for u in users}}
        assert {u: v[0] for u, v in mine["users"].items()} == dict(per_user)
    finally:
        fresh.close()
    states = [c.ask(op="state", users=users) for c in procs[:3]]
    for state in states:  # every survivor holds exactly the state a fresh open holds
        assert state["applied_seq"] == mine["applied_seq"]
        assert state["rows"] == mine["rows"]
        assert state["users"] == mine["users"]
        assert state["lists"] == mine["lists"]  # the same lists for the same users everywhere


def test_threads_read_and_write_while_another_process_writes(directory, children):
    """A request thread's check must not pin a read snapshot on the connection a writer thread
    uses: SQLite would refuse that write at once ("database is locked")."""
    (child,) = children(1)
    eng = Engine.open(directory, embedder=WordHashEmbedder())
    stop, errors, written = threading.Event(), [], []

    def read(n: int) -> None:
        while not stop.is_set():
            try:
                eng.recommend(f"p0-u{n}", 5)
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

    def write() -> None:
        while not stop.is_set():
            try:
                eng.record(Event("main-u", f"base-{len(written) % 60:03d}", "click", text=f"main-{len(written)}"))
                written.append(1)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    try:
        threads = [threading.Thread(target=read, args=(n,)) for n in range(2)] + [threading.Thread(target=write)]
        child.send(op="write", tag="p0", seed=0, seconds=2.5, save_every=50)
        for t in threads:
            t.start()
        assert "done" in child.reply()
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert written
        eng.catch_up()
        with Engine.open(directory, embedder=WordHashEmbedder()) as fresh:
            assert {it.id: fresh.catalog.row(it.id) for it in fresh.catalog} == \
                {it.id: eng.catalog.row(it.id) for it in eng.catalog}
            for user in ["main-u"] + [f"p0-u{j}" for j in range(3)] + ["shared-0", "shared-1"]:
                assert eng.users.get(user).version == fresh.users.get(user).version, user
    finally:
        stop.set()
        eng.close()


def test_an_event_in_one_process_is_in_the_next_list_of_another(directory, children):
    (b,) = children(1)
    a = Engine.open(directory, embedder=WordHashEmbedder())  # memory cache on: nothing stale may be served
    try:
        for n in range(4):
            user = f"reader-{n}"
            first = b.ask(op="recommend", user=user)
            assert b.ask(op="recommend", user=user)["items"] == first["items"]  # admitted to B's cache
            a.record(Event(user, first["items"][0], "click"))
            after = b.ask(op="recommend", user=user)
            assert after["version"] == 1
            assert first["items"][0] not in after["items"]  # consumed: excluded by B's very next request
    finally:
        a.close()


def test_cli_ingest_while_an_app_records_and_saves(directory, tmp_path):
    events = tmp_path / "events.jsonl"
    with events.open("w") as fh:
        for n in range(300):
            fh.write(json.dumps({"user_id": f"ing-{n % 7}", "item_id": f"base-{n % 60:03d}", "kind": "view",
                                 "ts": 1_700_000_000 + n, "text": f"ing-{n}"}) + "\n")
    app = Engine.open(directory, embedder=WordHashEmbedder())
    acked: list[str] = []
    try:
        cli = subprocess.Popen([sys.executable, "-m", "recsieve.cli", "ingest", str(directory), str(events)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        n = 0
        while cli.poll() is None or n < 40:
            app.record(Event(f"app-{n % 5}", f"base-{(n * 3) % 60:03d}", "click", text=f"app-{n}"))
            acked.append(f"app-{n}")
            if n % 10 == 9:
                app.save()
            n += 1
        out, err = cli.communicate()
        assert cli.returncode == 0, err
        assert "300 events recorded" in out
        app.catch_up()
        assert app.users.get("ing-0").version == 43  # the app sees what the ingest job wrote
    finally:
        app.close()
    with Engine.open(directory, embedder=WordHashEmbedder()) as eng:
        texts = Counter(e.text for e in eng.journal.events())
        assert set(texts) == set(acked) | {f"ing-{n}" for n in range(300)} and max(texts.values()) == 1
        assert sum(eng.users.get(f"ing-{k}").version for k in range(7)) == 300
        assert sum(eng.users.get(f"app-{k}").version for k in range(5)) == len(acked)


def test_a_model_switched_in_one_process_serves_in_another(directory, children):
    (b,) = children(1)
    assert b.ask(op="recommend", user="someone")["model"] == "recall-only"
    a = Engine.open(directory, embedder=WordHashEmbedder())
    try:
        names = a.feature_names()
        rng = np.random.default_rng(0)
        f, h = len(names), 4
        head = RankingHead(names, np.zeros(f, np.float32), np.ones(f, np.float32), rng.normal(size=(f, h)).astype(np.float32),
                           np.zeros(h, np.float32), rng.normal(size=h).astype(np.float32), 0.0,
                           report={"trained_at": "2026-01-01T00:00:00Z"})
        head.save(directory / "models" / "head-1")
        a.use_model(directory / "models" / "head-1", tier="fast", persist=True)
        assert a.model_version != "recall-only"
        assert b.ask(op="recommend", user="someone")["model"] == a.model_version  # B's very next request
    finally:
        a.close()
    with Engine.open(directory, embedder=WordHashEmbedder()) as eng:  # the switch was persisted
        eng.recommend("someone", 5)
        assert eng.model_version == b.ask(op="recommend", user="someone")["model"]


# -- one process, two engines: the mechanics, fast -----------------------------------------


def test_two_journals_on_one_file_get_distinct_sequence_numbers(open_journal):  # noqa: F811 (the imported fixture)
    one, two = open_journal(4), open_journal(4)
    try:
        seqs = []
        for n in range(20):
            journal = one if n % 3 else two
            seqs.append(journal.append([EventRecord(0, "u", "a", 0, "click", float(n), None, f"e{n}")]))
        assert seqs == list(range(1, 21))  # the UNIQUE failure: each process counted on its own
        assert [e.text for e in one.tail(0)] == [f"e{n}" for n in range(20)]
        assert two.head() == one.head() == 20
    finally:
        one.close()
        two.close()


def test_a_lagging_process_reloads_after_compaction_and_loses_nothing(directory):
    a = Engine.open(directory, embedder=WordHashEmbedder())
    b = Engine.open(directory, embedder=WordHashEmbedder())
    try:
        before = b.stats()["applied_seq"]
        a.upsert_items([Item("late-1", title="late red kettle")])
        a.record(Event("u", "late-1", "click"))
        a.save()  # compacts the upsert away: B has not applied it
        assert a.journal.floor() > before
        b.record(Event("u", "base-001", "view"))  # B's write catches up first: reloads, then appends
        assert "late-1" in b.catalog and b.users.get("u").version == 2
        a.upsert_items([Item("late-2", title="late blue lamp")])
        a.save()
        assert b.search("late blue lamp", 1)[0][0] == "late-2"  # B's read reloads as well
        assert b.catalog.row("late-2") == a.catalog.row("late-2")
        assert [r.item_id for r in b.recommend("u", 10)] == [r.item_id for r in a.recommend("u", 10)]
    finally:
        a.close()
        b.close()


def test_a_snapshot_records_the_sequence_its_process_applied(directory):
    a = Engine.open(directory, embedder=WordHashEmbedder())
    b = Engine.open(directory, embedder=WordHashEmbedder())
    try:
        a.record([Event("u", "base-002", "click"), Event("v", "base-003", "click")])
        b.save()  # B applies A's events first, then writes them into its snapshot
        manifest = json.loads((directory / "MANIFEST.json").read_text())
        assert manifest["meta"]["seq"] == b.stats()["applied_seq"] == a.stats()["journal_seq"]
    finally:
        a.close()
        b.close()
    with Engine.open(directory, embedder=WordHashEmbedder()) as eng:
        assert eng.users.get("u").version == 1 and eng.users.get("v").version == 1


def test_a_writer_waits_for_the_journal_lock_then_says_busy(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", 4, busy_timeout_s=0.2)
    other = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="busy"):
            journal.append([ItemOp(0, "remove", ["x"], None)])
        other.execute("ROLLBACK")
        assert journal.append([ItemOp(0, "remove", ["x"], None)]) == 1
    finally:
        other.close()
        journal.close()


def test_journal_versions(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path, 4).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE meta SET value='1' WHERE key='version'")  # written by a one-process recsieve
    Journal(path, 4).close()
    assert db.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0] == "2"
    db.execute("UPDATE meta SET value='3' WHERE key='version'")  # written by a newer recsieve
    with pytest.raises(IncompatibleVersionError, match="version '3'"):
        Journal(path, 4)
    db.close()


def test_network_filesystems_are_refused(tmp_path):
    mounts = tmp_path / "mounts"
    share = tmp_path / "my share"
    share.mkdir()
    escaped = str(share).replace(" ", "\\040")
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {escaped} nfs4 rw 0 0\n")
    assert network_filesystem(share / "eng", mounts) == "nfs4"
    assert network_filesystem(tmp_path, mounts) is None
    with pytest.raises(StoreError, match="nfs4 network filesystem"):
        Journal(share / "journal.sqlite", 4, mounts=mounts)
    assert not (share / "journal.sqlite").exists()
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nhost:/x {escaped} fuse.sshfs rw 0 0\n")
    assert network_filesystem(share, mounts) == "fuse.sshfs"
    assert network_filesystem(share, tmp_path / "no-such-file") is None
