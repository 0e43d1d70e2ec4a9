"""train-reranker end to end on a toy log: CLI -> saved head + cross-encoder -> the engine re-ranks with them."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from recsieve import Engine, EngineConfig, Event
from recsieve.catalog import read_items
from recsieve.cli import main
from recsieve.engine.ranker import RankingHead
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
    for u in range(40):
        cat = sorted(by_cat)[u % len(by_cat)]
        for t, item in enumerate(rng.choice(by_cat[cat], size=4, replace=False)):
            lines.append(json.dumps({"user_id": f"u{u}", "item_id": str(item), "kind": "click", "ts": 1000.0 + 60 * t}))
    events = root / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    model = root / "reranker"
    rc = main(["train-reranker", str(root / "engine"), "--events", str(events), "--out", str(model),
               "--epochs", "10", "--ce-users", "24", "--ce-steps-per-user", "1", "--hard-negatives", "2",
               "--random-negatives", "1", "--max-length", "48", "--batch-size", "8", "--ce-epochs", "1"])
    assert rc == 0
    return root, model


def test_cli_writes_a_head_and_a_marked_cross_encoder(trained, capsys):
    _, model = trained
    head = RankingHead.load(model)
    assert head.cross_encoder == "cross-encoder" and head.blend >= 0
    assert head.report["train_users"] > 0 and head.report["valid_users"] > 0
    assert set(head.report["blend_table"]) >= {"0.0", "1.0"}
    marker = json.loads((model / head.cross_encoder / MARKER_FILE).read_text())
    assert marker["train_examples"] > 0 and marker["valid_examples"] > 0
    assert set(marker["valid_after"]) >= {"ndcg@10", "mrr"}


def _open_copy(root: Path, tmp_path: Path, embedder, **settings) -> Engine:
    """The trained fixture's engine, copied and reopened with ``settings`` in its config file."""
    path = tmp_path / "engine"
    shutil.copytree(root / "engine", path)
    (path / "recsieve.toml").write_text(EngineConfig.load(path).replace(**settings).to_toml())
    return Engine.open(path, embedder=embedder)


def _with_blend(model: Path, folder: Path, blend: float) -> Path:
    """A copy of the trained model whose cross-encoder weight is ``blend``."""
    shutil.copytree(model, folder)
    head = RankingHead.load(folder)
    head.blend = blend
    head.save(folder)
    return folder


def test_full_tier_adds_the_cross_encoder_to_the_head(trained, tmp_path, embedder):
    root, model = trained
    blended = _with_blend(model, tmp_path / "blended", 0.5)
    eng = _open_copy(root, tmp_path, embedder, reranker_model=str(blended), rerank_n=20, cache="none")
    try:
        eng.record([Event("x", "kit-001", "click"), Event("x", "kit-002", "click")])
        view = eng.users.get("x")
        recalled = eng.recall_stage(view)
        fast = eng.ranking_head.score(eng.features(view, recalled))
        top = np.argsort(-fast, kind="stable")[:20]
        texts = [eng.catalog.text(int(r)) for r in recalled.cands.rows[top]]
        text = eng.reranker.score(eng.render_context(view, None), texts)
        rows, scores = eng.rank(view)
        expected = recalled.cands.rows[top][np.argsort(-(fast[top] + 0.5 * text), kind="stable")]
        np.testing.assert_array_equal(rows[:20], expected)  # the head's top 20, re-ordered with the text score
        assert set(rows[20:].tolist()) == set(recalled.cands.rows.tolist()) - set(expected.tolist())
        assert np.all(np.diff(scores) <= 0)
        # while a near-line refresh of the user is pending, the request path skips the cross-encoder
        scored = eng.stats()["score_cache"]["entries"]
        eng.record(Event("x", "kit-003", "click"))
        now = eng.users.get("x")
        eng._hot.refresher = SimpleNamespace(is_pending=lambda user: True)
        pending = [r.item_id for r in eng.recommend("x", 10)]
        eng._hot.refresher = None
        again = eng.recall_stage(now)
        head_order = again.cands.rows[np.argsort(-eng.ranking_head.score(eng.features(now, again)), kind="stable")]
        assert pending == [eng.catalog.item_id(int(r)) for r in head_order[:10]]
        assert eng.stats()["score_cache"]["entries"] == scored
        eng.use_model(blended, tier="fast")
        assert eng.reranker is None
        fast_rows, _ = eng.rank(now)
        recalled, fast = again, eng.ranking_head.score(eng.features(now, again))
        np.testing.assert_array_equal(fast_rows, recalled.cands.rows[np.argsort(-fast, kind="stable")])
    finally:
        eng.close()


def test_engine_reranks_with_a_bare_cross_encoder(trained, tmp_path, embedder):
    root, model = trained
    eng = _open_copy(root, tmp_path, embedder, reranker_model=str(model / "cross-encoder"), rerank_n=20, cache="none")
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
    eng = _open_copy(root, tmp_path, embedder, reranker_model=str(tmp_path / "nope"))
    try:
        from recsieve.errors import ModelNotTrainedError

        with pytest.raises(ModelNotTrainedError):
            eng.recommend("x", 5)
    finally:
        eng.close()


def test_cli_train_writes_one_folder_with_the_context_model_and_serves_it(trained, tmp_path, embedder):
    root, _ = trained
    path = tmp_path / "engine"
    shutil.copytree(root / "engine", path)
    report = tmp_path / "train.json"
    rc = main(["train", str(path), "--events", str(root / "events.jsonl"), "--epochs", "3", "--dim", "16",
               "--max-len", "8", "--scorer-steps", "1", "--scorer-epochs", "1", "--users", "0",
               "--steps-per-user", "1", "--quiet", "--json", str(report)])
    assert rc == 0
    written = json.loads(report.read_text())
    model = Path(written["model"])
    assert model.parent == path / "models" and (model / "context" / "manifest.json").exists()
    assert written["encoder_users"] > 0 and written["head"]["train_examples"] > 0
    # the same folder again without --overwrite: refused, nothing changes
    assert main(["train", str(path), "--events", str(root / "events.jsonl"), "--out", str(model), "--quiet"]) == 2
    eng = Engine.open(path, embedder=embedder)  # the switch was written to the config
    try:
        assert eng.model_dir == model and eng.serving_model.context is not None
        assert "context.context_cross" in eng.ranking_head.features
        assert len(eng.recommend("u1", 5)) == 5
    finally:
        eng.close()


def test_train_cli_defaults_are_the_librarys():
    """`recsieve train` with no options trains what `train_engine` trains by default."""
    import inspect

    from recsieve.cli import build_parser
    from recsieve.training.model import CONTEXT_DIM, SCORER_STEPS, train_engine

    args = build_parser().parse_args(["train", "DIR"])
    defaults = inspect.signature(train_engine).parameters
    assert args.scorer_steps == SCORER_STEPS == defaults["scorer_steps"].default
    assert args.users == defaults["users"].default
    assert args.dim == CONTEXT_DIM == defaults["dim"].default
    assert args.steps_per_user == defaults["steps_per_user"].default
