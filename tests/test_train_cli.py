"""train-reranker end to end on a toy log: CLI -> saved model -> the engine re-ranks with it."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recsieve import Engine, EngineConfig, Event
from recsieve.catalog import read_items
from recsieve.cli import main
from recsieve.rerankers.cross_encoder import MARKER_FILE

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedder):
    """An engine whose users each browse one category, and a re-ranker trained on it by the CLI."""
    root = tmp_path_factory.mktemp("train")
    eng = Engine.create(root / "engine", EngineConfig(index="flat", refresh_threads=0), embedder=embedder)
    items = read_items(DEMO)
    eng.upsert_items(items)
    eng.save()
    eng.close()
    by_cat: dict[str, list[str]] = {}
    for it in items:
        by_cat.setdefault(str(it.metadata["category"]), []).append(it.id)
    rng = np.random.default_rng(0)
    lines = []
    for u in range(24):
        cat = sorted(by_cat)[u % len(by_cat)]
        for t, item in enumerate(rng.choice(by_cat[cat], size=4, replace=False)):
            lines.append(json.dumps({"user_id": f"u{u}", "item_id": str(item), "kind": "click", "ts": 1000.0 + 60 * t}))
    events = root / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    model = root / "reranker"
    rc = main(["train-reranker", str(root / "engine"), "--events", str(events), "--out", str(model),
               "--steps-per-user", "1", "--hard-negatives", "2", "--random-negatives", "1",
               "--max-length", "48", "--batch-size", "8", "--epochs", "1"])
    assert rc == 0
    return root, model


def test_cli_writes_a_marked_model(trained, capsys):
    _, model = trained
    marker = json.loads((model / MARKER_FILE).read_text())
    assert marker["train_examples"] > 0 and marker["valid_examples"] > 0
    assert set(marker["valid_after"]) >= {"ndcg@10", "mrr"}


def test_engine_reranks_with_the_trained_model(trained, tmp_path, embedder):
    root, model = trained
    path = tmp_path / "engine"
    shutil.copytree(root / "engine", path)
    cfg = EngineConfig.load(path).replace(reranker_model=str(model), rerank_n=20, cache="none")
    (path / "recsieve.toml").write_text(cfg.to_toml())
    eng = Engine.open(path, embedder=embedder)
    try:
        eng.record([Event("x", "kit-001", "click"), Event("x", "kit-002", "click")])
        recs = eng.recommend("x", 10)
        plain_rows, _ = eng.rank(eng.users.get("x"), rerank=False)
        ranked_rows, scores = eng.rank(eng.users.get("x"))
        assert len(recs) == 10 and all(np.isfinite(r.score) for r in recs)
        assert set(ranked_rows.tolist()) == set(plain_rows.tolist())  # same candidates, re-ordered
        assert np.all(np.diff(scores) <= 0)
        # the re-ranker's own scores decide the order of the top rerank_n
        texts = [eng.catalog.text(int(r)) for r in ranked_rows[:20]]
        direct = eng.reranker.score(eng.render_context(eng.users.get("x"), None), texts)
        assert np.all(np.diff(direct) <= 1e-5)
        assert eng.stats()["score_cache"]["entries"] >= 20
    finally:
        eng.close()


def test_missing_model_is_refused(tmp_path, trained, embedder):
    root, _ = trained
    path = tmp_path / "engine"
    shutil.copytree(root / "engine", path)
    cfg = EngineConfig.load(path).replace(reranker_model=str(tmp_path / "nope"))
    (path / "recsieve.toml").write_text(cfg.to_toml())
    eng = Engine.open(path, embedder=embedder)
    try:
        from recsieve.errors import ModelNotTrainedError

        with pytest.raises(ModelNotTrainedError):
            eng.recommend("x", 5)
    finally:
        eng.close()
