"""Streaming evaluation: replay a dataset in time order and compare ways of keeping the model fresh.

The stream is every interaction of every user in one global order: by timestamp where the
dataset has them; otherwise (ML-1M's ``sequences.tsv`` has none) by each event's *relative
position* in its user's history, ``i / len(user)``, ties broken by user -- i.e. all users are
assumed to move through their histories at the same pace. That order is an assumption, not
a fact of the data, and the report says which one was used.

The first ``start`` share of the stream is recorded into a real engine and a ranking head
is trained on it. The rest is cut into ``chunks`` equal chunks. Before each chunk, each
strategy's head ranks the next item of (a seeded sample of) the users active in the chunk:
the user's first event in the chunk is the target, everything recorded before it is the
history, and ranking is over every item the engine recalls (a miss counts zero). Then the
chunk is recorded and each strategy updates:

- ``never``: the initial head, never updated;
- ``continual``: :meth:`~recsieve.engine.engine.Engine.learn` on the chunk's new events
  with a replay of older examples (warm start, a few epochs);
- ``retrain``: a new head trained from scratch on everything so far.

Compute time of each update is measured on this machine. Recall statistics and user
profiles are the engine's own and identical for all strategies; only the head differs.
Every strategy ranks for the same users, so gains over ``never`` are paired per user; the
report gives their mean with a 95% bootstrap interval, and the share of retraining's gain
that continual updates recover -- only when retraining's gain is significant.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.embedding import Embedder, SentenceTransformerEmbedder
from recsieve.engine.config import EngineConfig
from recsieve.engine.engine import Engine
from recsieve.engine.ranker import listwise_ndcg
from recsieve.errors import InvalidInputError
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.metrics import paired_gain
from recsieve.training import learn, train_engine_ranker
from recsieve.types import Event

__all__ = ["STRATEGIES", "paired_gain", "stream_order", "streaming_evaluation"]

STRATEGIES = ("never", "continual", "retrain")


def stream_order(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """``(users, positions, order)``: every event as (user index, position), in stream order."""
    lengths = np.array([len(s) for s in dataset.sequences], np.int64)
    users = np.repeat(np.arange(len(lengths)), lengths)
    positions = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
    if dataset.timestamps is not None:
        key = np.concatenate(dataset.timestamps) if len(lengths) else np.zeros(0)
        order, how = np.lexsort((positions, users, key)), "timestamps"
    else:
        key = (positions + 1) / lengths[users]
        order, how = np.lexsort((users, key)), "relative position in each user's history (no timestamps)"
    return users[order], positions[order], how


def _ts(dataset: Dataset, u: int, i: int) -> float:
    return float(dataset.timestamps[u][i]) if dataset.timestamps is not None else float(i) * 60.0


def streaming_evaluation(
    dataset: Dataset,
    *,
    start: float = 0.5,
    chunks: int = 4,
    eval_users: int | None = 1000,
    ranker_users: int | None = 2000,
    learn_users: int | None = 500,
    learn_epochs: int = 10,
    seed: int = 0,
    config: EngineConfig | None = None,
    embedder: Embedder | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the streaming comparison (see the module docstring); returns a JSON-ready report.

    ``eval_users``: users evaluated per chunk (a seeded sample; ``None``: every active one);
    ``ranker_users``: users a (re)training samples; ``learn_users``: users with new steps a
    continual update samples (its bounded compute); ``learn_epochs``: its epochs.
    """
    if not 0.0 < start < 1.0:
        raise InvalidInputError("start", start, "must be between 0 and 1")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise InvalidInputError("chunks", chunks, "must be a positive integer")
    users, positions, how = stream_order(dataset)
    n = len(users)
    cuts = [int(n * start)] + [int(n * start + (n - n * start) * (c + 1) / chunks) for c in range(chunks)]
    config = config or EngineConfig(index="flat", cache="none", refresh_threads=0)
    embedder = embedder or SentenceTransformerEmbedder(config.embedding_model)
    rng = np.random.default_rng(seed)
    item_ids = dataset.item_ids

    def events(lo: int, hi: int) -> list[Event]:
        return [Event(f"u{u}", item_ids[dataset.sequences[u][i]], "click", ts=_ts(dataset, u, i))
                for u, i in zip(users[lo:hi].tolist(), positions[lo:hi].tolist())]

    report: dict[str, Any] = {"dataset": dataset.name, "order": how, "events": n, "start": start, "chunks": [],
                              "strategies": list(STRATEGIES), "eval_users_per_chunk": eval_users, "seed": seed,
                              "ranker_users": ranker_users, "learn_users": learn_users, "learn_epochs": learn_epochs}
    with tempfile.TemporaryDirectory(prefix="recsieve-stream-") as tmp:
        root = Path(tmp)
        engine = Engine.create(root / "engine", config, embedder=embedder)
        try:
            engine.upsert_items(list(dataset.items), show_progress=progress)
            rows = engine.catalog.rows(list(item_ids))
            for lo in range(0, cuts[0], 50_000):
                engine.record(events(lo, min(lo + 50_000, cuts[0])))
            t = time.perf_counter()
            train_engine_ranker(engine, root / "never", users=ranker_users, seed=seed, progress=progress)
            report["initial_train_seconds"] = time.perf_counter() - t
            heads = {"never": root / "never", "continual": root / "never", "retrain": root / "never"}
            per_user: dict[str, list[float]] = {name: [] for name in STRATEGIES}
            seen = np.zeros(len(dataset.sequences), np.int64)  # events recorded so far, per user
            np.add.at(seen, users[: cuts[0]], 1)
            for c in tqdm(range(chunks), desc="stream chunks", disable=not progress):
                lo, hi = cuts[c], cuts[c + 1]
                firsts: dict[int, int] = {}
                for u, i in zip(users[lo:hi].tolist(), positions[lo:hi].tolist()):
                    firsts.setdefault(u, i)
                active = [u for u, i in firsts.items() if i >= 1 and i == seen[u]]
                if eval_users is not None and len(active) > eval_users:
                    active = sorted(rng.choice(active, size=eval_users, replace=False).tolist())
                row: dict[str, Any] = {"chunk": c + 1, "events": hi - lo, "evaluated_users": len(active)}
                for name in STRATEGIES:
                    engine.use_model(heads[name], tier="fast")
                    scores = []
                    for u in active:
                        target = int(rows[dataset.sequences[u][firsts[u]]])
                        ranked, _ = engine.rank(engine.users.get(f"u{u}"))
                        hit = np.flatnonzero(ranked == target)
                        scores.append(listwise_ndcg(-np.arange(len(ranked), dtype=np.float32), int(hit[0]))
                                      if hit.size else 0.0)
                    row[f"ndcg@10_{name}"] = float(np.mean(scores)) if scores else None
                    if c > 0:  # chunk 1 is evaluated before any update
                        per_user[name].extend(scores)
                for lo2 in range(lo, hi, 50_000):
                    engine.record(events(lo2, min(lo2 + 50_000, hi)))
                np.add.at(seen, users[lo:hi], 1)
                if c == chunks - 1:
                    report["chunks"].append(row)
                    break
                engine.use_model(heads["continual"], tier="fast")
                t = time.perf_counter()
                learned = learn(engine, epochs=learn_epochs, users=learn_users)
                row["continual_seconds"] = time.perf_counter() - t
                row["continual_updated"] = learned["updated"]
                if learned["updated"]:
                    heads["continual"] = Path(learned["model"])
                t = time.perf_counter()
                heads["retrain"] = root / f"retrain-{c + 1}"
                train_engine_ranker(engine, heads["retrain"], users=ranker_users, seed=seed, progress=False)
                row["retrain_seconds"] = time.perf_counter() - t
                report["chunks"].append(row)
        finally:
            engine.close()
    for name in STRATEGIES:
        vals = [r[f"ndcg@10_{name}"] for r in report["chunks"][1:] if r[f"ndcg@10_{name}"] is not None]
        report[f"mean_ndcg@10_{name}"] = float(np.mean(vals)) if vals else None
    report["mean_ndcg_over"] = "chunks 2.. (chunk 1 is evaluated before any update)"
    report["gain_vs_never"] = {name: paired_gain(per_user[name], per_user["never"], seed=seed)
                               for name in ("continual", "retrain")}
    gain_c, gain_r = report["gain_vs_never"]["continual"], report["gain_vs_never"]["retrain"]
    significant = gain_r["ci95"][0] > 0 if gain_r["ci95"] else False
    report["recovered_share"] = gain_c["mean"] / gain_r["mean"] if significant else None
    report["recovered_share_note"] = ("continual gain / retraining gain over never updating" if significant else
                                      "retraining's gain is not significant (its 95% interval includes 0): "
                                      "nothing measurable to recover")
    report["continual_seconds_total"] = sum(r.get("continual_seconds", 0.0) for r in report["chunks"])
    report["retrain_seconds_total"] = sum(r.get("retrain_seconds", 0.0) for r in report["chunks"])
    return report
