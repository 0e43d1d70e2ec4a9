"""Open and replay costs against size (issue #17): how long ``Engine.open`` takes, and how much
memory it needs, as the catalog and the journal grow.

Two curves, each point measured in a fresh child process (``python -m recsieve.bench.open_replay
--child DIR``: the library and the modules an open loads (FAISS, PyArrow) are imported first and
timed apart as ``imports_s``, then only ``Engine.open`` is timed; the child's peak RSS is its
``VmHWM``), so nothing the builder cached in memory is reused (the OS page cache is: the
files were just written):

- **catalog size** (default 10,000 / 100,000 / 1,000,000 generated items, quick 2,000 / 20,000): an
  engine with a FAISS IVF index over the items' vectors (clustered synthetic 384-d vectors, looked
  up by the items' rendered texts, so no language model runs), saved; ``open_s`` is the time to
  open it, which reads the columnar catalog and the vectors and checks the snapshot's files.
- **journal size** (default 1,000,000 / 10,000,000 generated events over 10,000 items, quick
  50,000 / 200,000): the engine is saved after its items, then 90% of the events are journaled
  and it is closed. ``open_replay_all_s`` opens it then: every journaled event is replayed
  (the snapshot holds no statistics for them) -- the baseline. The engine is then saved (the
  snapshot now carries the recall statistics and user state at 90%), the last 10% journaled,
  and ``open_tail_s`` opens it again: only the tail after the snapshot is replayed.

Writes JSON and a PNG of both curves.

    python -m recsieve.bench.open_replay [--quick] [--items 10000,100000,1000000]
        [--events 1000000,10000000] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import (
    ProgressBar,
    clustered_vectors,
    load_average,
    machine_info,
    synthetic_items,
)
from recsieve.catalog import Catalog
from recsieve.types import Event, Item

__all__ = ["catalog_point", "journal_point", "main"]

_PRESETS = {True: {"items": (2_000, 20_000), "events": (50_000, 200_000)},
            False: {"items": (10_000, 100_000, 1_000_000), "events": (1_000_000, 10_000_000)}}
#: Items of the journal-size engine, and events per user there.
JOURNAL_ITEMS, EVENTS_PER_USER = 10_000, 100
#: Share of the events journaled before the snapshot that carries the statistics.
SNAPSHOT_SHARE = 0.9
_CHUNK = 100_000


class VectorTable:
    """An embedder that returns each generated item's precomputed vector by its rendered text
    (a unit vector seeded by the text's length for any other text: none is sent here)."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.dim = int(vectors.shape[1])
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def embed(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        rows = [self._rows.get(t, -1) for t in texts]
        out = self._vectors[np.maximum(rows, 0)].copy()
        for i, r in enumerate(rows):
            if r < 0:
                v = np.random.default_rng(len(texts[i])).standard_normal(self.dim).astype(np.float32)
                out[i] = v / np.linalg.norm(v)
        return out


def _items_with_vectors(n: int, seed: int) -> tuple[list[Item], VectorTable]:
    items = synthetic_items(n, seed)
    catalog = Catalog()
    vectors, _ = clustered_vectors(n, 1, seed=seed)
    return items, VectorTable([catalog.render(it) for it in items], vectors)


def _chunks(seq: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _open_in_child(directory: Path) -> dict[str, Any]:
    """Time ``Engine.open(directory)`` in a fresh interpreter; its seconds, peak RSS and counts."""
    out = subprocess.run([sys.executable, "-m", "recsieve.bench.open_replay", "--child", str(directory)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``; ``ru_maxrss`` would also count the parent's
    resident set at the fork, which Linux keeps across ``exec``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(directory: str) -> None:
    t0 = time.perf_counter()
    import faiss  # noqa: F401  the libraries an open loads lazily: their import is timed apart
    import pyarrow.parquet  # noqa: F401

    from recsieve.engine.engine import Engine

    imports_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = Engine.open(directory)
    seconds = time.perf_counter() - t0
    stats = {"open_s": seconds, "imports_s": imports_s, "peak_rss_mb": _peak_rss_mb(),
             "items": len(engine.catalog), "applied_seq": engine.applied_seq,
             "snapshot_seq": engine._store.snapshot_seq}
    engine.close()
    print(json.dumps(stats))


def catalog_point(n_items: int, workdir: Path, *, seed: int = 0, index: str = "ivf") -> dict[str, Any]:
    """Build and save an engine of ``n_items`` generated items; time opening it in a child."""
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

    items, embedder = _items_with_vectors(n_items, seed)
    directory = workdir / f"catalog-{n_items}"
    config = EngineConfig(index=index, cache="none", refresh_threads=0)
    t0 = time.perf_counter()
    engine = Engine.create(directory, config, embedder=embedder)
    try:
        for part in _chunks(items):
            engine.upsert_items(part, show_progress=False)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.save()
        save_s = time.perf_counter() - t0
    finally:
        engine.close()
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    row = {"items": n_items, "index": index, "build_s": build_s, "save_s": save_s, "disk_mb": size / 2**20,
           **_open_in_child(directory)}
    shutil.rmtree(directory, ignore_errors=True)
    return row


def _events(n: int, item_ids: Sequence[str], seed: int, start: int, base_ts: float) -> list[Event]:
    """Events ``start..start+n-1`` of the generated stream: user ``e // EVENTS_PER_USER``-ish,
    items Zipf-distributed, one second apart."""
    rng = np.random.default_rng([seed, start])
    users = rng.integers(0, max(1, (start + n) // EVENTS_PER_USER), n)
    ranks = np.minimum(rng.zipf(1.2, n) - 1, len(item_ids) - 1)
    kinds = ("view", "click", "cart")
    pick = rng.integers(0, 3, n)
    return [Event(f"u{u}", item_ids[r], kinds[k], ts=base_ts + start + i)
            for i, (u, r, k) in enumerate(zip(users.tolist(), ranks.tolist(), pick.tolist(), strict=True))]


def journal_point(n_events: int, workdir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Journal ``n_events`` generated events into a saved engine; time opening it with every event
    to replay and with only the tail after a snapshot at :data:`SNAPSHOT_SHARE` (children)."""
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

    items, embedder = _items_with_vectors(JOURNAL_ITEMS, seed)
    ids = [it.id for it in items]
    random.Random(seed).shuffle(ids)  # popularity unrelated to the id order
    directory = workdir / f"journal-{n_events}"
    config = EngineConfig(index="flat", cache="none", refresh_threads=0)
    head = int(n_events * SNAPSHOT_SHARE)
    base_ts = time.time() - n_events - 86_400
    recorded, record_s = 0, 0.0

    def record(engine: Any, lo: int, hi: int) -> None:
        nonlocal recorded, record_s
        for start in range(lo, hi, _CHUNK):
            batch = _events(min(_CHUNK, hi - start), ids, seed, start, base_ts)
            t0 = time.perf_counter()
            recorded += engine.record(batch)
            record_s += time.perf_counter() - t0

    engine = Engine.create(directory, config, embedder=embedder)
    try:
        engine.upsert_items(items, show_progress=False)
        engine.save()
        record(engine, 0, head)
    finally:
        engine.close()
    replay_all = _open_in_child(directory)
    engine = Engine.open(directory, embedder=embedder)
    try:
        t0 = time.perf_counter()
        engine.save()
        snapshot_s = time.perf_counter() - t0
        record(engine, head, n_events)
    finally:
        engine.close()
    tail = _open_in_child(directory)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    shutil.rmtree(directory, ignore_errors=True)
    return {"events": n_events, "items": JOURNAL_ITEMS, "snapshot_at": head, "recorded": recorded,
            "record_events_per_s": recorded / record_s if record_s else None, "snapshot_s": snapshot_s,
            "disk_mb": size / 2**20,
            "open_replay_all_s": replay_all["open_s"], "open_replay_all_peak_rss_mb": replay_all["peak_rss_mb"],
            "replayed_all": replay_all["applied_seq"] - replay_all["snapshot_seq"],
            "open_tail_s": tail["open_s"], "open_tail_peak_rss_mb": tail["peak_rss_mb"],
            "replayed_tail": tail["applied_seq"] - tail["snapshot_seq"]}


def plot(res: dict[str, Any], path: Path) -> None:
    """Two panels: open seconds against items, and against journaled events (both replays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    rows = res["catalog"]
    a.plot([r["items"] for r in rows], [r["open_s"] for r in rows], "o-", label="Engine.open")
    a.set(xscale="log", xlabel="items (FAISS IVF, 384-d)", ylabel="seconds", title="open vs catalog size")
    rows = res["journal"]
    b.plot([r["events"] for r in rows], [r["open_replay_all_s"] for r in rows], "o-",
           label="open, every event replayed")
    b.plot([r["events"] for r in rows], [r["open_tail_s"] for r in rows], "s-",
           label=f"open after a snapshot at {SNAPSHOT_SHARE:.0%}")
    b.set(xscale="log", xlabel="journaled events", ylabel="seconds", title="open vs journal size")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Engine.open time and peak RSS against catalog and journal size")
    ap.add_argument("--quick", action="store_true", help="small points: 2,000 / 20,000 items, 50,000 / 200,000 "
                    "events (default 10,000 / 100,000 / 1,000,000 items and 1,000,000 / 10,000,000 events)")
    ap.add_argument("--items", help="comma-separated catalog sizes (0: skip the catalog curve)")
    ap.add_argument("--events", help="comma-separated journal sizes (0: skip the journal curve)")
    ap.add_argument("--index", default="ivf", help="the catalog curve's index kind (default ivf)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--plot", help="write the PNG here (default: next to --json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    preset = _PRESETS[args.quick]
    sizes = [int(x) for x in args.items.split(",")] if args.items else list(preset["items"])
    counts = [int(x) for x in args.events.split(",")] if args.events else list(preset["events"])
    sizes, counts = [s for s in sizes if s > 0], [c for c in counts if c > 0]
    workdir = Path(tempfile.mkdtemp(prefix="recsieve-open-"))
    bar = ProgressBar(len(sizes) + len(counts), True)
    started = time.time()
    res: dict[str, Any] = {"catalog": [], "journal": []}
    try:
        for n in sizes:
            bar.step(f"open vs catalog: {n:,} items")
            res["catalog"].append({**catalog_point(n, workdir, seed=args.seed, index=args.index),
                                   "load_avg": load_average()})
            print(json.dumps(res["catalog"][-1]), flush=True)
        for n in counts:
            bar.step(f"open vs journal: {n:,} events")
            res["journal"].append({**journal_point(n, workdir, seed=args.seed), "load_avg": load_average()})
            print(json.dumps(res["journal"][-1]), flush=True)
    finally:
        bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    res.update(machine=machine_info(), wall_s=time.time() - started,
               command="python -m recsieve.bench.open_replay " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    target = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if target and res["catalog"] and res["journal"]:
        plot(res, Path(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
