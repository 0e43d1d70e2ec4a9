"""The full pipeline on real data, CI-sized: ML-1M, a fixed seeded subset of 300 test users.

Marked slow (about 5 minutes on 2 cores): the engine records all 994k training events, the
ranking head trains on 2,000 users' last steps, then 300 users are ranked over all items. It
checks what the README claims at full size, on a subset: the trained head orders recall's
candidates better than recall's own fusion, and beats the strongest baseline (transitions).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recsieve.evaluation.baselines import Transitions
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.harness import evaluate
from recsieve.evaluation.systems import EngineSystem

ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"


@pytest.mark.slow
@pytest.mark.skipif(not ML1M.is_dir(), reason="shared ML-1M data not present")
def test_full_pipeline_on_ml1m_subset(embedder) -> None:
    data = load_dataset("ml-1m", ML1M)
    recall = EngineSystem(data, name="recsieve-recall", embedder=embedder, rerank=False, progress=False)
    full = EngineSystem(data, name="recsieve", embedder=embedder, train_ranker=True, ranker_users=2000,
                        progress=False)
    try:
        report = evaluate(data, [Transitions(), recall, full], users=300, seed=0, progress=False)
    finally:
        recall.close()
        full.close()
    rows = {r["system"]: r for r in report["results"]}
    assert report["users"] == 300
    assert rows["recsieve"]["recall@200"] == rows["recsieve-recall"]["recall@200"]  # same candidates
    assert rows["recsieve"]["ndcg@10"] > rows["recsieve-recall"]["ndcg@10"] * 1.2
    assert rows["recsieve"]["ndcg@10"] > rows["transitions"]["ndcg@10"]
    assert full.train_report["valid_ndcg@10_head"] > full.train_report["valid_ndcg@10_recall_order"]
