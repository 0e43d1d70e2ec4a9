"""Ranking examples per second: the batched builder against the per-user loop, same engine, same run.

    python bench/ranking_examples_speed.py --data ../shared/data/ml-1m [--users 1000] [--batched-users 4000]
        [--steps 3] [--repeat 3] [--context] [--profile 1000] [--json bench/results/ranking_examples_ml1m.json]

The engine: ML-1M's movies embedded with the bundled MiniLM (vectors cached under bench/.cache/),
every user's ratings recorded in order as clicks (one a minute), an exact FAISS index, as
``recsieve evaluate`` builds its engine. ``--context`` also trains a context model on it
(``recsieve.training.train_engine`` with the encoder's and the scorer's time budgets below; its
quality is beside the point here, its size is the default's) and builds the examples with it.
The engine folder (and model) is kept under bench/.cache/ for a rerun; ``--rebuild`` makes it anew.

Measured, each a full ``ranking_groups`` call (statistics built from every user's steps, then the
examples of a seeded sample, ``--steps`` last positive steps each, as ``recsieve train`` asks):
the per-user loop (``batch=False``) and the batched builder on the same ``--users`` users (their
groups compared: same rows, targets and contexts, features to 1e-5), then the batched builder on
``--batched-users`` users (``recsieve train``'s default cap), ``--repeat`` calls each on its
default threads and on one thread (the median call reported, every call's seconds listed). Wall
and process CPU seconds and the machine's load average before and after each are recorded: the
figures move with the machine's load (a repeated call on this 2-core VM varied by up to 20%).

``--profile N``: one more batched call of N users on one thread under cProfile (so slower than
the timed calls), recording the cumulative seconds of each stage (:data:`STAGES`), and the
candidate scorer's FLOPs and one-thread speed on one batch (:func:`scorer_arithmetic`).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from recsieve import Engine, EngineConfig, Event
from recsieve.bench.common import load_average, machine_info
from recsieve.context.cooccurrence import CoOccurrence
from recsieve.context.modules import candidate_attention
from recsieve.embedding import SentenceTransformerEmbedder
from recsieve.engine.ranker import candidate_features
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.systems import STEP_SECONDS, CachedEmbedder
from recsieve.training.batched_context import cross_scores, user_vectors
from recsieve.training.batched_examples import default_threads
from recsieve.training.batched_recall import PopularityTable, TransitionTable, fuse_many
from recsieve.training.batched_search import search_many
from recsieve.training.examples import engine_sequences, ranking_groups

CACHE = Path(__file__).resolve().parent / ".cache"

#: ``--profile``'s stages: (name, the function, or the label cProfile gives a built-in).
STAGES = (
    ("candidate scorer (cross_scores)", cross_scores),
    ("encoder user vectors (user_vectors)", user_vectors),
    ("exact FAISS searches (search_many)", search_many),
    ("transitions channel (TransitionTable.recall)", TransitionTable.recall),
    ("popularity channel (PopularityTable.recall)", PopularityTable.recall),
    ("fusion (fuse_many)", fuse_many),
    ("serving's candidate_features", candidate_features),
    ("co-occurrence (CoOccurrence.scores_many)", CoOccurrence.scores_many),
    ("candidate_attention (scorer)", candidate_attention),
    ("torch linear layers (encoder and scorer)", "<built-in method torch._C._nn.linear>"),
    ("torch attention kernel (encoder)", "<built-in method torch._C._nn.scaled_dot_product_attention>"),
)


def embedder_for(texts: list[str]) -> CachedEmbedder:
    """MiniLM, with these texts' vectors read from (or written to) the cache."""
    emb = CachedEmbedder(SentenceTransformerEmbedder())
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"text-vectors-{key}.npy"
    if path.exists():
        emb.preload(texts, np.load(path))
    else:
        vectors = emb.embed(texts, show_progress=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return emb


def build(data: str, folder: Path, rebuild: bool, context: bool, budget_s: float) -> tuple[Engine, Path | None]:
    ds = load_dataset("ml-1m", data)
    emb = embedder_for(list(ds.item_texts))
    model = folder / "model"
    if folder.exists() and not rebuild and (model.exists() or not context):
        return Engine.open(folder / "engine", embedder=emb), model if model.exists() else None
    if folder.exists():
        shutil.rmtree(folder)
    config = EngineConfig(index="flat", cache="none", refresh_threads=0)
    eng = Engine.create(folder / "engine", config, embedder=emb)
    eng.upsert_items(list(ds.items), show_progress=False)
    ids = ds.item_ids
    events: list[Event] = []
    for u, seq in enumerate(ds.sequences):
        events += [Event(f"u{u}", ids[i], "click", ts=t * STEP_SECONDS) for t, i in enumerate(seq.tolist())]
        if len(events) >= 50_000:
            eng.record(events)
            events = []
    eng.record(events)
    if context:
        from recsieve.training import train_engine

        train_engine(eng, model, users=200, budget_s=budget_s, scorer_budget_s=budget_s / 2, switch=False,
                     progress=True)
    eng.save()
    return eng, model if context else None


def timed(eng: Engine, sequences, users: int, steps: int, model, batch: bool, threads: int | None = None,
          repeat: int = 1) -> tuple[dict, list]:
    """``repeat`` calls; the figures are the median call's (by wall time), every call's seconds listed."""
    before = load_average()
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        groups, tried = ranking_groups(eng, sequences, users=users, steps_per_user=steps, seed=0, model=model,
                                       batch=batch, threads=threads, progress=True)
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    seconds, cpu = sorted(runs)[len(runs) // 2]
    return {"users": tried, "groups": len(groups), "threads": (threads or default_threads()) if batch else None,
            "seconds": round(seconds, 2), "users_per_s": round(tried / seconds, 1), "cpu_seconds": round(cpu, 2),
            "users_per_cpu_s": round(tried / cpu, 1), "calls_seconds": [round(w, 2) for w, _ in runs],
            "load_before": before, "load_after": load_average()}, groups


def profiled(eng: Engine, sequences, users: int, steps: int, model) -> dict:
    """One batched call of ``users`` users on one thread under cProfile: each stage's cumulative seconds."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    groups, tried = ranking_groups(eng, sequences, users=users, steps_per_user=steps, seed=0, model=model,
                                   batch=True, threads=1)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # {(file, line, function): (calls, primitive calls, tottime, cumtime, callers)}
    stages = {}
    for name, target in STAGES:
        key = ("~", 0, target) if isinstance(target, str) else \
            (target.__code__.co_filename, target.__code__.co_firstlineno, target.__code__.co_name)
        stages[name] = round(stats[key][3], 2) if key in stats else None
    return {"users": tried, "groups": len(groups), "threads": 1, "seconds_profiled": round(wall, 2),
            "stage_cumulative_seconds": stages, "candidate_scorer_arithmetic": scorer_arithmetic(model)}


def scorer_arithmetic(model, requests: int = 64, candidates: int = 200, repeat: int = 5) -> dict | None:
    """The candidate scorer's FLOPs (torch's counter) and one-thread speed on one batch of
    ``requests`` seeded random contexts of ``max_len`` events, ``candidates`` candidates each."""
    scorer = model.context.model.scorer if model is not None and model.context is not None else None
    if scorer is None:
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from recsieve.context.model import torch_threads

    table = torch.from_numpy(model.context.model.item_vectors())
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, table.shape[0], (requests, model.context.model.settings.max_len), generator=gen)
    cands = torch.randint(0, table.shape[0], (requests, candidates), generator=gen)
    with torch.no_grad(), torch_threads(1):
        with FlopCounterMode(display=False) as counter:
            scorer(table, rows, cands)
        seconds = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            scorer(table, rows, cands)
            seconds.append(time.perf_counter() - t0)
    flops, median = counter.get_total_flops(), sorted(seconds)[len(seconds) // 2]
    return {"requests": requests, "candidates": candidates, "context_events": int(rows.shape[1]),
            "gflop": round(flops / 1e9, 2), "mflop_per_candidate": round(flops / requests / candidates / 1e6, 3),
            "seconds_one_thread": round(median, 3), "gflop_per_s": round(flops / 1e9 / median, 1)}


def compare(new: list, old: list) -> dict:
    same = len(new) == len(old)
    diff, identical = 0.0, 0
    for a, b in zip(new, old):
        if (a.user_id, a.target, a.context) == (b.user_id, b.target, b.context) and np.array_equal(a.rows, b.rows) \
                and a.features.shape == b.features.shape:
            d = float(np.max(np.abs(a.features - b.features) / (1.0 + np.abs(b.features)), initial=0.0))
            diff = max(diff, d)
            identical += int(d <= 1e-5)
        else:
            same = False
    return {"groups": len(old), "identical_groups": identical, "all_identical": same and identical == len(old),
            "max_feature_difference": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/ml-1m")
    ap.add_argument("--users", type=int, default=1000, help="users of the per-user loop and the paired batched run")
    ap.add_argument("--batched-users", type=int, default=4000, help="users of the batched run alone (0: skip)")
    ap.add_argument("--steps", type=int, default=3, help="last positive steps per user (recsieve train's default)")
    ap.add_argument("--context", action="store_true", help="train a context model and build with it")
    ap.add_argument("--budget-s", type=float, default=300.0, help="--context: the encoder's training budget")
    ap.add_argument("--repeat", type=int, default=3, help="calls of each --batched-users run (the median is reported)")
    ap.add_argument("--profile", type=int, default=0,
                    help="also profile one batched call of this many users on one thread (0: skip)")
    ap.add_argument("--rebuild", action="store_true", help="build the engine (and model) anew, not from bench/.cache/")
    ap.add_argument("--json", help="write the results here (JSON)")
    a = ap.parse_args()
    folder = CACHE / ("ranking-examples-ml1m" + ("-context" if a.context else ""))
    t0 = time.perf_counter()
    eng, model_dir = build(a.data, folder, a.rebuild, a.context, a.budget_s)
    build_s = time.perf_counter() - t0
    try:
        model = eng.load_model(model_dir) if model_dir is not None else None
        sequences = engine_sequences(eng)
        out: dict = {
            "dataset": "ml-1m", "items": len(eng.catalog), "users": len(sequences),
            "events": sum(len(s) for s in sequences.values()), "index": eng.config.index,
            "recall_n": eng.config.recall_n, "steps_per_user": a.steps, "engine_build_s": round(build_s, 1),
            "context_model": None if model is None else {
                "dim": model.context.model.settings.dim, "max_len": model.context.model.settings.max_len,
                "candidate_scorer": model.context.model.scorer is not None},
            "command": " ".join(["python", "bench/ranking_examples_speed.py", *sys.argv[1:]]),
            "machine": machine_info(),
        }
        out["batched_same_users"], new = timed(eng, sequences, a.users, a.steps, model, True)
        out["per_user_loop"], old = timed(eng, sequences, a.users, a.steps, model, False)
        out["speedup_same_users"] = round(out["per_user_loop"]["seconds"] / out["batched_same_users"]["seconds"], 1)
        out["equality"] = compare(new, old)
        del new, old
        if a.batched_users:
            out["batched"], _ = timed(eng, sequences, a.batched_users, a.steps, model, True, repeat=a.repeat)
            out["batched_one_thread"], _ = timed(eng, sequences, a.batched_users, a.steps, model, True, threads=1,
                                                 repeat=a.repeat)
        if a.profile:
            out["profile_one_thread"] = profiled(eng, sequences, a.profile, a.steps, model)
    finally:
        eng.close()
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
