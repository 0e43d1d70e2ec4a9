"""The ``scale`` section of ``recsieve bench`` (partial, issue #17): build-index throughput per
embedding backend against sentence-transformers fp32, in the same run.

Each backend of :data:`recsieve.embedding.EMBEDDING_BACKENDS` that is installed builds the same
generated catalog into a new engine directory (:func:`recsieve.engine.engine.build_index`:
embed, index, journal, snapshot), in rounds, the backends' order rotated each round; items/s is
items over the build's wall time and each backend's ratio to ``torch`` is taken within a round
(the machine may be shared: the load average is recorded at every round). Exports (ONNX,
OpenVINO) are made before timing, into the run's work folder, and their time is reported apart.

Whether a backend keeps the fp32 model's neighbours is measured on the catalog's texts (and on
ML-1M titles when run with ``--ml1m``): each text's 10 nearest other texts by cosine, against
fp32's (``recall_at_10``), and the smallest cosine between a text's two vectors. The CPU's
int8-relevant instruction set (:func:`recsieve.quantization.cpu_isa`) is recorded with them.

With ``--zero-shot`` (and ``--ml1m``) it also ranks ML-1M items for every user by the
zero-shot text model with each backend that keeps neighbours, paired with fp32 on the same users.

It then times ``Engine.recommend`` during a compaction of the vector index against without one
(:mod:`recsieve.bench.compaction`; 100,000 items, quick 5,000): ``compaction`` in the result, with
``recommend_p99_during_vs_without_compaction``.

    python -m recsieve.bench.scale --quick --ml1m ../shared/data/ml-1m --zero-shot --json scale.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import (
    ProgressBar,
    load_average,
    machine_info,
    pinned_threads,
    synthetic_items,
)
from recsieve.bench.compaction import RATIO_KEY, compaction_latency, format_compaction
from recsieve.catalog import Catalog
from recsieve.embedding import EMBEDDING_BACKENDS, SentenceTransformerEmbedder, resolve_backend
from recsieve.engine.config import EngineConfig
from recsieve.engine.engine import build_index
from recsieve.quantization import cpu_isa

__all__ = ["KEEP_NEIGHBOURS", "format_scale", "main", "neighbour_recall", "scale_section", "zero_shot"]

#: recall@10 of text search against fp32 a backend must reach to "keep neighbours".
KEEP_NEIGHBOURS = 0.98
_NEEDS = {"onnx": ("onnxruntime", "onnx"), "onnx-int8": ("onnxruntime", "onnx"),
          "openvino": ("openvino", "onnxruntime", "onnx"), "openvino-bf16": ("openvino", "onnxruntime", "onnx")}
_PRESETS = {True: {"items": 1000, "rounds": 2, "quality_texts": 1000, "compaction_items": 5000},
            False: {"items": 10_000, "rounds": 3, "quality_texts": 3000, "compaction_items": 100_000}}


def neighbour_recall(reference: np.ndarray, got: np.ndarray, k: int = 10) -> float:
    """Mean share of each text's ``k`` nearest other texts under ``reference`` vectors that
    ``got`` vectors also rank in their ``k`` nearest (rows L2-normalised; ``k`` is at most the
    number of other texts)."""
    k = min(k, len(reference) - 1)
    if k < 1:
        return 1.0
    hits = 0
    for lo in range(0, len(reference), 1024):
        top = []
        for vecs in (reference, got):
            sims = vecs[lo:lo + 1024] @ vecs.T
            sims[np.arange(sims.shape[0]), np.arange(lo, lo + sims.shape[0])] = -np.inf
            top.append(np.argpartition(-sims, k - 1, axis=1)[:, :k])
        hits += sum(len(set(a) & set(b)) for a, b in zip(*top))
    return hits / (len(reference) * k)


def _installed(backend: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS.get(backend, ()))


def scale_section(cfg: dict[str, Any], seed: int, bar: ProgressBar, notes: list[str], workdir: Path, *,
                  quick: bool = False, backends: Sequence[str] | None = None, items: int | None = None,
                  rounds: int | None = None, extra_texts: dict[str, list[str]] | None = None,
                  compaction_items: int | None = None) -> dict[str, Any]:
    """Build-index items/s and neighbour recall per embedding backend, and recommend latency
    during a compaction (see the module docstring).

    ``backends``: a subset of :data:`EMBEDDING_BACKENDS` (``torch`` is always measured);
    ``items`` / ``rounds``: override the preset (quick: 1,000 items, 2 rounds; full: 10,000, 3);
    ``extra_texts``: more named text sets for the neighbour check (e.g. ML-1M titles);
    ``compaction_items``: the compaction engine's size (quick 5,000, full 100,000; 0: not run).
    """
    preset = dict(_PRESETS[quick])
    n_items, n_rounds = items or preset["items"], rounds or preset["rounds"]
    wanted = ["torch", *[b for b in (backends or EMBEDDING_BACKENDS) if b != "torch"]]
    missing = [b for b in wanted if not _installed(b)]
    if missing:
        notes.append(f"scale: not installed, not measured: {missing}")
    names = [b for b in wanted if b not in missing]
    catalog = Catalog()
    data = synthetic_items(n_items, seed)
    texts = {"generated": [catalog.render(it) for it in data[: preset["quality_texts"]]], **(extra_texts or {})}
    versions = {}
    for dist in ("onnxruntime", "onnx", "openvino"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    out: dict[str, Any] = {"items": n_items, "rounds": n_rounds, "isa": cpu_isa(), "runtimes": versions,
                           "default_backend":
                           resolve_backend("auto"), "keep_neighbours_at": KEEP_NEIGHBOURS,
                           "quality_texts": {k: len(v) for k, v in texts.items()}, "backends": {}}
    embedders, reference = {}, {}
    for name in names:
        bar.step(f"scale: {name} (export, neighbours)")
        t0 = time.perf_counter()
        emb = SentenceTransformerEmbedder(backend=name, cache_dir=workdir / "exports", show_progress=False)
        emb.embed(texts["generated"][:32])
        row: dict[str, Any] = {"load_s": time.perf_counter() - t0}
        for key, batch in texts.items():
            vecs = emb.embed(batch)
            if name == "torch":
                reference[key] = vecs
            row[f"recall_at_10_{key}"] = neighbour_recall(reference[key], vecs)
            row[f"min_cosine_{key}"] = float(np.min(np.sum(vecs * reference[key], axis=1)))
        row["keeps_neighbours"] = all(row[f"recall_at_10_{k}"] >= KEEP_NEIGHBOURS for k in texts)
        embedders[name], out["backends"][name] = emb, row
    per_round: list[dict[str, float]] = []
    for r in range(n_rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        speeds: dict[str, float] = {}
        load = load_average()
        for name in order:
            bar.step(f"scale: round {r + 1}/{n_rounds}, build-index with {name}")
            directory = workdir / f"scale-{name}-{r}"
            config = EngineConfig(embedding_backend=name, cache="none", refresh_threads=0)
            t0 = time.perf_counter()
            engine, _ = build_index(data, directory, config, embedder=embedders[name], show_progress=False)
            engine.close()
            speeds[name] = n_items / (time.perf_counter() - t0)
            shutil.rmtree(directory, ignore_errors=True)
        per_round.append({**speeds, "load_avg": load})
    for name in names:
        row = out["backends"][name]
        row["items_per_s"] = [p[name] for p in per_round]
        row["items_per_s_median"] = float(np.median(row["items_per_s"]))
        row["ratio_vs_torch"] = [p[name] / p["torch"] for p in per_round]
        row["ratio_vs_torch_median"] = float(np.median(row["ratio_vs_torch"]))
    out["load_avg_per_round"] = [p["load_avg"] for p in per_round]
    keeping = [n for n in names if out["backends"][n]["keeps_neighbours"]]
    out["fastest_keeping_neighbours"] = max(keeping, key=lambda n: out["backends"][n]["ratio_vs_torch_median"])
    notes.append("scale: build-index items/s = generated items / wall time of build_index (embed, HNSW, journal, "
                 "snapshot); ratio_vs_torch within each round, median over rounds; exports made before timing")
    n_compaction = preset["compaction_items"] if compaction_items is None else compaction_items
    if n_compaction:
        bar.step(f"scale: recommend during a compaction at {n_compaction:,} items")
        out["compaction"] = compaction_latency(n_compaction, seed, workdir)
        out[RATIO_KEY] = out["compaction"][RATIO_KEY]
        notes.append(f"scale: {RATIO_KEY} = p99 of single-caller recommend while FaissIndex.compact(wait=False) "
                     "rebuilds the HNSW graph in the background / p99 before and after it (recsieve.bench.compaction)")
    return out


def zero_shot(dataset: Any, backends: Sequence[str], cache_dir: Path, *, users: int | None = None,
              seed: int = 0) -> dict[str, Any]:
    """ML-1M zero-shot NDCG@10 (item embeddings against the mean of the user's recent items',
    :class:`~recsieve.evaluation.systems.TextZeroShot`) per backend, each paired with fp32's on
    the same users (leave-one-out, full ranking)."""
    from recsieve.evaluation.harness import evaluate
    from recsieve.evaluation.systems import TextZeroShot

    names = ["torch", *[b for b in backends if b != "torch"]]
    systems = [TextZeroShot(dataset, SentenceTransformerEmbedder(backend=b, cache_dir=cache_dir, show_progress=False),
                            name=f"text-{b}") for b in names]
    report = evaluate(dataset, systems, users=users, seed=seed, reference="text-torch", progress=False)
    rows = {r["system"][len("text-"):]: r for r in report["results"]}
    base = rows["torch"]["ndcg@10"]
    return {"users": report["users"], "protocol": report["protocol"], "seed": seed, "backends": {
        b: {"ndcg@10": r["ndcg@10"], "ratio_vs_torch": r["ndcg@10"] / base if base else None,
            "paired_vs_torch": r.get("vs_text-torch")} for b, r in rows.items()}}


def format_scale(res: dict[str, Any]) -> str:
    """A few lines: one per backend."""
    lines = [f"build-index, {res['items']:,} generated items, {res['rounds']} rounds, ISA {res['isa']}, "
             f"auto = {res['default_backend']}, load per round {res['load_avg_per_round']}"]
    for name, row in res["backends"].items():
        quality = ", ".join(f"recall@10 {k} {row[f'recall_at_10_{k}']:.4f}" for k in res["quality_texts"])
        lines.append(f"  {name:14s} {row['items_per_s_median']:7.0f} items/s  {row['ratio_vs_torch_median']:5.2f}x "
                     f"fp32 (rounds {', '.join(f'{x:.2f}' for x in row['ratio_vs_torch'])})  {quality}"
                     f"{'' if row['keeps_neighbours'] else '  (loses neighbours)'}")
    if "compaction" in res:
        lines.append(format_compaction(res["compaction"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="build-index items/s per embedding backend against fp32")
    ap.add_argument("--quick", action="store_true", help="1,000 items, 2 rounds (default 10,000, 3)")
    ap.add_argument("--items", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--backends", help=f"comma-separated subset of {EMBEDDING_BACKENDS}")
    ap.add_argument("--ml1m", help="ML-1M folder: its titles join the neighbour check")
    ap.add_argument("--zero-shot", action="store_true", help="with --ml1m: zero-shot NDCG@10 per backend "
                    "that keeps neighbours, paired with fp32's")
    ap.add_argument("--users", type=int, help="users of the zero-shot evaluation (default: all)")
    ap.add_argument("--compaction-items", type=int, help="items of the compaction measurement (default "
                    "100,000, quick 5,000; 0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    extra, dataset = {}, None
    if args.ml1m:
        from recsieve.evaluation.datasets import load_dataset

        dataset = load_dataset("ml-1m", args.ml1m)
        extra["ml1m"] = list(dataset.item_texts)
    notes: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="recsieve-scale-"))
    bar = ProgressBar(1, True)
    started = time.time()
    try:
        with pinned_threads(args.threads):
            res = scale_section({}, 0, bar, notes, workdir, quick=args.quick, items=args.items, rounds=args.rounds,
                                backends=args.backends.split(",") if args.backends else None, extra_texts=extra,
                                compaction_items=args.compaction_items)
            if args.zero_shot and dataset is not None:
                bar.step("scale: ML-1M zero-shot NDCG@10 per backend")
                keeping = [b for b, row in res["backends"].items() if row["keeps_neighbours"]]
                res["zero_shot_ml1m"] = zero_shot(dataset, keeping, workdir / "exports", users=args.users)
    finally:
        bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    res.update(notes=notes, machine=machine_info(args.threads), wall_s=time.time() - started,
               command="python -m recsieve.bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(format_scale(res))
    for b, row in res.get("zero_shot_ml1m", {}).get("backends", {}).items():
        print(f"  zero-shot ML-1M NDCG@10 {b:14s} {row['ndcg@10']:.4f} ({row['ratio_vs_torch']:.3f} of fp32)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
