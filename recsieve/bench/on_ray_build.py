"""The build half of the ``ray`` bench section: the single-process build against the distributed
build with 1 and 2 embedding actors, on the same generated catalog, in the same run.

Each build makes a new engine directory from a JSONL file (the single-process
:func:`recsieve.engine.engine.build_index`; :func:`recsieve.distributed.build_index` with
``actors`` actors on the Ray this process is connected to). Items/s is items over the build's
wall time, the embedder's loading included on both sides (Ray's start-up is not: Ray is up
already), after one untimed warm-up build of a few items in one process and with the most actors
(the model's files in the page cache, exports made, libraries imported). Builds run in rounds,
the order of the configurations rotated each round;
``ratio_vs_single_process`` is taken within a round, median over rounds.

With ``fit_items`` (fewer than ``items``), every configuration also builds the first
``fit_items`` items, and a line through the two sizes (median seconds over rounds) splits a
build's time into a fixed part (start-up, model loading, the snapshot) and a marginal rate:
``seconds = fixed_s + items / marginal_items_per_s``. Two points fit it exactly; it is what a
capacity model extrapolates from, and is named as such.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import ProgressBar, load_average
from recsieve.bench.processes import HashEmbedder
from recsieve.types import Item

__all__ = ["WARM_UP_ITEMS", "build_comparison", "two_point_fit"]

#: Items of the untimed builds (single process; the most actors) that warm model files, exports and imports.
WARM_UP_ITEMS = 20


def two_point_fit(small: int, small_s: float, large: int, large_s: float) -> dict[str, float | None]:
    """``{"fixed_s", "marginal_items_per_s"}`` of the line through ``(small, small_s)`` and
    ``(large, large_s)``; both ``None`` where the larger build was not slower (no rate to read)."""
    if large <= small or large_s <= small_s:
        return {"fixed_s": None, "marginal_items_per_s": None}
    rate = (large - small) / (large_s - small_s)
    return {"fixed_s": small_s - small / rate, "marginal_items_per_s": rate}


def _write_items(items: Sequence[Item], path: Path) -> Path:
    path.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items), encoding="utf-8")
    return path


def build_comparison(items: Sequence[Item], config: Any, workdir: Path, bar: ProgressBar, *,
                     actors: Sequence[int], rounds: int, batch_size: int, fit_items: int,
                     embedder: str) -> tuple[dict[str, Any], Path]:
    """Every build of every round (see the module docstring); returns the result and the first
    round's single-process directory of all ``items`` (kept: it is served next). ``embedder``:
    ``"model"`` (the config's) or ``"hash"`` (:class:`~recsieve.bench.processes.HashEmbedder`)."""
    from recsieve.distributed import build_index as distributed_build
    from recsieve.engine.engine import build_index

    n = len(items)
    sizes = [fit_items, n] if 0 < fit_items < n else [n]
    files = {size: _write_items(items[:size], workdir / f"ray-items-{size}.jsonl")
             for size in {WARM_UP_ITEMS if n > WARM_UP_ITEMS else n, *sizes}}
    names = ["single_process", *[f"actors_{a}" for a in actors]]
    kept = workdir / f"ray-build-single_process-{n}-0"

    def build(name: str, size: int, tag: str) -> tuple[float, Any]:
        directory = workdir / f"ray-build-{name}-{size}-{tag}"
        t0 = time.perf_counter()
        report = None
        if name == "single_process":
            engine, _ = build_index(files[size], directory, config,
                                    embedder=HashEmbedder() if embedder == "hash" else None, show_progress=False)
            engine.close()
        else:
            report = distributed_build(files[size], directory, config, actors=int(name.split("_")[1]),
                                       batch_size=batch_size, embedder=HashEmbedder if embedder == "hash" else None)
        seconds = time.perf_counter() - t0
        if directory != kept:
            shutil.rmtree(directory, ignore_errors=True)
        return seconds, report

    warm: dict[str, float] = {}
    for name in ("single_process", f"actors_{max(actors)}"):  # model files, exports, imports: warm
        bar.step(f"ray: warm-up build, {name.replace('_', ' ')}")
        warm[name] = build(name, min(n, WARM_UP_ITEMS), "warm")[0]
    out_rounds: list[dict[str, Any]] = []
    for r in range(rounds):
        row: dict[str, Any] = {"load_avg": load_average(), "seconds": {}, "items_per_s": {}, "phases_s": {}}
        for name in names[r % len(names):] + names[: r % len(names)]:
            row["seconds"][name] = {}
            for size in sizes:
                bar.step(f"ray: round {r + 1}/{rounds}, build {size:,} items, {name.replace('_', ' ')}")
                seconds, report = build(name, size, str(r))
                row["seconds"][name][str(size)] = seconds
                if size == n:
                    row["items_per_s"][name] = n / seconds
                    if report is not None:
                        row["phases_s"][name] = {"read": report.read_s, "embed": report.embed_s,
                                                 "assemble": report.assemble_s}
        out_rounds.append(row)

    def summary(name: str) -> dict[str, Any]:
        speeds = [r["items_per_s"][name] for r in out_rounds]
        got: dict[str, Any] = {"items_per_s": speeds, "items_per_s_median": float(np.median(speeds))}
        if len(sizes) == 2:
            small_s, large_s = (float(np.median([r["seconds"][name][str(s)] for r in out_rounds])) for s in sizes)
            got["fit"] = two_point_fit(sizes[0], small_s, n, large_s)
        return got

    base = [r["items_per_s"]["single_process"] for r in out_rounds]
    result: dict[str, Any] = {"items": n, "fit_items": sizes[0] if len(sizes) == 2 else None, "rounds": out_rounds,
                              "warm_up": {"items": min(n, WARM_UP_ITEMS), "seconds": warm}, "batch_size": batch_size, "single_process": summary("single_process"), "actors": {}}
    for a in actors:
        ratios = [r["items_per_s"][f"actors_{a}"] / b for r, b in zip(out_rounds, base)]
        result["actors"][str(a)] = {**summary(f"actors_{a}"), "ratio_vs_single_process": ratios,
                                    "ratio_vs_single_process_median": float(np.median(ratios))}
    return result, kept
