"""Instruction following, measured: does a request in plain words change what comes back?

For a seeded sample of held-out users (leave-one-out, test stage), a request is made from
the held-out target's own attributes (:func:`~recsieve.engine.requests.request_for`: one of
its categories, or its decade). Conditions, all on the same engine and recall statistics:

- ``no instruction``: the user's context alone, ranking head trained without requests;
- ``instruction``: the request, same head (recall and features read it; the head never saw one);
- ``instruction, trained``: the request, a head trained with requests attached to half of
  its examples (:func:`~recsieve.training.train_engine_ranker` ``instruction_share=0.5``).

Metrics: HR@10 and NDCG@10 of the target, and the share of the top 10 that satisfies the
request (``satisfying@10``; for ``no instruction`` it is measured against the same request).

With a request, the engine also holds the answer to the constraints the request states
(:mod:`recsieve.engine.constraints`: the genre named is recalled first, a decade is a filter on
``year``); ``parsed`` is the share of requests whose text the parser reads as the attribute it
was made from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.embedding import Embedder
from recsieve.engine.config import EngineConfig
from recsieve.engine.constraints import Constraints
from recsieve.engine.ranker import listwise_ndcg
from recsieve.engine.requests import Request, request_for
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.protocol import leave_one_out, training_sequences
from recsieve.evaluation.systems import EngineSystem
from recsieve.training import train_engine_ranker

__all__ = ["CONDITIONS", "instruction_evaluation"]

CONDITIONS = ("no instruction", "instruction", "instruction, trained")


def parsed_as_asked(request: Request, constraints: Constraints) -> bool:
    """Whether ``constraints`` hold exactly what ``request`` was made from: its category among
    the named ones, or a year filter that passes its decade and nothing next to it."""
    if request.field == "category":
        return any(c.lower() == str(request.value).lower() for c in constraints.categories)
    flt, d = constraints.filter, int(request.value)
    return flt is not None and all(flt.matches({"year": y}) == (d <= y < d + 10) for y in (d - 1, d, d + 9, d + 10))


def instruction_evaluation(dataset: Dataset, *, users: int = 500, seed: int = 0, ranker_users: int | None = None,
                           config: EngineConfig | None = None, embedder: Embedder | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Run the comparison (see the module docstring); returns a JSON-ready report."""
    split = leave_one_out(dataset, users=users, seed=seed)
    system = EngineSystem(dataset, name="recsieve", config=config, embedder=embedder, rerank=False, progress=progress)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="recsieve-instructions-") as tmp:
        try:
            system.fit(training_sequences(split, "test"), dataset.n_items)
            engine = system.engine
            assert engine is not None and system._rows is not None
            heads = {}
            for name, share in (("plain", 0.0), ("trained", 0.5)):
                heads[name] = Path(tmp) / name
                train_engine_ranker(engine, heads[name], users=ranker_users, instruction_share=share, seed=seed,
                                    progress=progress)
            cases = []
            for ctx, target in zip(split.contexts("test"), split.targets("test")):
                request = request_for(dataset.items[int(target)], rng)
                if request is not None:
                    cases.append((ctx, int(system._rows[target]), request))
            parsed = [parsed_as_asked(request, engine.constraints(request.text)) for _, _, request in cases]
            rows: dict[str, dict[str, list[float]]] = {c: {"hr": [], "ndcg": [], "sat": []} for c in CONDITIONS}
            for condition, head, with_text in (("no instruction", "plain", False), ("instruction", "plain", True),
                                               ("instruction, trained", "trained", True)):
                engine.use_model(heads[head], tier="fast")
                for ctx, target, request in tqdm(cases, desc=condition, disable=not progress, leave=False):
                    ranked, _ = engine.rank(system.view(ctx), instruction=request.text if with_text else None)
                    top = ranked[:10]
                    hit = np.flatnonzero(ranked == target)
                    m = rows[condition]
                    m["hr"].append(float(target in top.tolist()))
                    m["ndcg"].append(listwise_ndcg(-np.arange(len(ranked), dtype=np.float32), int(hit[0]))
                                     if hit.size else 0.0)
                    items = [engine.catalog.get(engine.catalog.item_id(int(r))) for r in top]
                    m["sat"].append(float(np.mean([request.satisfied_by(it) for it in items])) if items else 0.0)
        finally:
            system.close()
    return {
        "dataset": dataset.name, "users": len(cases), "seed": seed,
        "protocol": "leave-one-out test targets; request made from the target's own category or decade; "
                    "the engine holds the answer to the constraints the request states",
        "parsed": float(np.mean(parsed)) if parsed else 0.0,
        "results": [{"condition": c, "hr@10": float(np.mean(rows[c]["hr"])), "ndcg@10": float(np.mean(rows[c]["ndcg"])),
                     "satisfying@10": float(np.mean(rows[c]["sat"]))} for c in CONDITIONS],
    }
