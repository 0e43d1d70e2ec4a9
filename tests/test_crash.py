"""Crash safety: kill -9 a child process in the middle of writes, reopen, and check nothing
acknowledged was lost and the directory answers."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from importlib import resources
from pathlib import Path

import pytest

from recsieve import Engine, EngineConfig
from recsieve.catalog import read_items

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))

CHILD = textwrap.dedent(
    """
    import sys
    from recsieve import Engine, Event, Item
    op, path = sys.argv[1], sys.argv[2]
    eng = Engine.open(path)
    eng.embed_text("warm up")  # load the model before the first write
    print("READY", flush=True)
    i = 0
    while True:
        if op == "ingest":
            eng.record([Event(f"u{i}", "boo-001", "click"), Event(f"u{i}", "mus-002", "view")])
        elif op == "upsert":
            eng.upsert_items([Item(f"new-{i}", title=f"Brand new gadget number {i}", metadata={"n": i})])
        elif op == "remove":
            eng.remove_items([f"mus-{i + 3:03d}"])
        elif op == "save":
            eng.record([Event(f"u{i}", "boo-003", "click")])
            eng.upsert_items([Item(f"new-{i}", title=f"Brand new gadget number {i}")])
            eng.save()
        print("ACK", i, flush=True)
        i += 1
    """
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, embedder):
    path = tmp_path_factory.mktemp("crash") / "base"
    eng = Engine.create(path, EngineConfig(index="flat", refresh_threads=0), embedder=embedder)
    eng.upsert_items(read_items(DEMO)[:60])
    eng.save()
    eng.close()
    return path


def run_and_kill(path: Path, op: str, delay: float) -> list[int]:
    """Start a writer child, let it write for ``delay`` seconds after it is ready, kill -9 it."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, op, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready = proc.stdout.readline()
    assert ready.strip() == "READY", proc.stderr.read()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(10)
    # A line cut short by the kill ("ACK" with no number, or no newline) was never a complete
    # acknowledgement: only whole "ACK <n>" lines count.
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(r"ACK (\d+)\n", line))]


DELAYS = {"ingest": (0.5, 2.0), "upsert": (1.0, 2.5), "remove": (0.5, 2.0), "save": (1.5, 4.0)}


def check_kill_points(tmp_path, base_dir, embedder, op, attempts):
    rng = random.Random(zlib.crc32(op.encode()) + attempts)
    for attempt in range(attempts):
        path = tmp_path / f"{op}-{attempt}"
        shutil.copytree(base_dir, path)
        acked = run_and_kill(path, op, delay=rng.uniform(*DELAYS[op]))
        assert acked, "the child acknowledged nothing before it was killed; raise the delay"
        eng = Engine.open(path, embedder=embedder)
        try:
            for i in acked:
                if op == "ingest":
                    view = eng.users.get(f"u{i}")
                    assert view is not None and view.version == 2, (i, acked[-1])
                elif op == "upsert":
                    assert f"new-{i}" in eng.catalog
                    assert eng.search(f"Brand new gadget number {i}", 60)  # index answers
                elif op == "remove":
                    assert f"mus-{i + 3:03d}" not in eng.catalog
                    assert f"mus-{i + 3:03d}" not in [r.item_id for r in eng.recommend("x", 60)]
                else:
                    assert eng.users.get(f"u{i}") is not None and f"new-{i}" in eng.catalog
            assert len(eng.recommend("someone", 5)) == 5
            assert len(eng.catalog) == len(eng.index)  # catalog and index agree after replay
        finally:
            eng.close()


@pytest.mark.parametrize("op", ["ingest", "upsert", "remove", "save"])
def test_kill_minus_nine_loses_nothing_acknowledged(tmp_path, base_dir, embedder, op):
    check_kill_points(tmp_path, base_dir, embedder, op, attempts=1)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["ingest", "upsert", "remove", "save"])
def test_kill_minus_nine_at_many_points(tmp_path, base_dir, embedder, op):
    check_kill_points(tmp_path, base_dir, embedder, op, attempts=6)
