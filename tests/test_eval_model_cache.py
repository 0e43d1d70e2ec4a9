"""The model cache of ``recsieve evaluate``: a repeat loads instead of training, another setting or
split trains again, a damaged or half-written entry is logged and retrained, never a crash."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from test_config import WordHashEmbedder
from test_evaluate_cli import write_custom

import recsieve.training
import recsieve.training.context_model as context_model
from recsieve.cli import build_parser
from recsieve.evaluation.baselines import Popularity
from recsieve.evaluation.cli import run_evaluation
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.harness import evaluate
from recsieve.evaluation.model_cache import (
    ENTRY,
    ModelCache,
    cache_key,
    dataset_fingerprint,
    default_cache_dir,
)
from recsieve.evaluation.sasrec import SASRec
from recsieve.types import Item


def toy(n_users=40, n_items=20, length=7, seed=0, name="toy"):
    rng = np.random.default_rng(seed)
    items = tuple(Item(f"i{i}", title=f"item {i}") for i in range(n_items))
    seqs = tuple(np.array([(s + t) % n_items for t in range(length)], np.int64)
                 for s in rng.integers(0, n_items, n_users))
    return Dataset(name, items, tuple(i.title for i in items), tuple(f"u{u}" for u in range(n_users)), seqs)


def tiny_sasrec(**kw):
    settings = {"hidden": 8, "blocks": 1, "max_len": 8, "epochs": 2, "batch_size": 16, "seed": 0} | kw
    return SASRec(**settings)


@pytest.fixture
def fits(monkeypatch):
    """Counts real trainings of the SASRec yardstick (its one training call)."""
    calls = []
    real = context_model.fit_context_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(context_model, "fit_context_model", counting)
    return calls


def run(data, cache, **kw):
    report = evaluate(data, [Popularity(), kw.pop("system", None) or tiny_sasrec()], progress=False, cache=cache,
                      reference="popularity", **kw)
    return {r["system"]: r for r in report["results"]}, report


def entries(cache):
    return sorted(p for p in cache.root.iterdir() if not p.name.startswith("."))


def test_a_repeat_loads_instead_of_training(tmp_path, fits):
    data, cache = toy(), ModelCache(tmp_path / "cache")
    first, report = run(data, cache)
    assert len(fits) == 1 and first["sasrec"]["from_cache"] is False and report["cache"]["from_cache"] == []
    second, report = run(data, cache)
    assert len(fits) == 1, "the second run trained again"
    assert second["sasrec"]["from_cache"] is True and report["cache"]["from_cache"] == ["sasrec"]
    assert second["popularity"]["from_cache"] is False  # nothing to cache: it just fits
    for key in ("ndcg@10", "hr@10", "mrr", "hr@20"):
        assert second["sasrec"][key] == first["sasrec"][key]
    assert len(entries(cache)) == 1 and json.dumps(report)


def test_other_settings_data_or_split_train_again(tmp_path, fits):
    data, cache = toy(), ModelCache(tmp_path / "cache")
    run(data, cache)
    run(data, cache, system=tiny_sasrec(hidden=16))  # another setting
    run(data, cache, system=tiny_sasrec(budget_s=60.0))  # another budget
    run(data, cache, seed=1)  # another split
    run(data, cache, users=10)
    run(data, cache, cold_items=0.3)
    run(data, cache, stage="valid")
    run(toy(seed=5), cache)  # other data under the same name
    assert len(fits) == 8 and len(entries(cache)) == 8
    rows, _ = run(data, cache, seed=1)
    assert len(fits) == 8 and rows["sasrec"]["from_cache"] is True


def test_the_key_covers_data_and_version():
    a, b = toy(), toy(seed=5)
    assert dataset_fingerprint(a) == dataset_fingerprint(toy())
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    renamed = Dataset("toy", tuple(Item(i.id, title=i.title + "!") for i in a.items), a.item_texts, a.user_ids,
                      a.sequences)
    assert dataset_fingerprint(renamed) != dataset_fingerprint(a)
    assert cache_key({"x": 1}) == cache_key({"x": 1}) != cache_key({"x": 2})


@pytest.mark.parametrize("damage", ["changed file", "half-written", "garbage entry", "unloadable"])
def test_a_damaged_entry_is_logged_and_retrained(tmp_path, fits, caplog, damage):
    data, cache = toy(), ModelCache(tmp_path / "cache")
    run(data, cache)
    (entry,) = entries(cache)
    if damage == "changed file":
        weights = entry / "state" / "model" / "encoder.pt"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "half-written":
        (entry / ENTRY).unlink()
    elif damage == "garbage entry":
        (entry / ENTRY).write_text("{not json")
    else:  # checksums agree, but the state does not load: its own files are damaged consistently
        weights = entry / "state" / "model" / "encoder.pt"
        weights.write_bytes(b"not a torch file")
        meta = json.loads((entry / ENTRY).read_text())
        from recsieve.storage import sha256_file

        meta["files"]["model/encoder.pt"] = sha256_file(weights)
        (entry / ENTRY).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="recsieve.evaluation"):
        rows, _ = run(data, cache)
    assert len(fits) == 2 and rows["sasrec"]["from_cache"] is False
    assert any("training again" in r.getMessage() for r in caplog.records), caplog.text
    rows, _ = run(data, cache)  # the entry was written again, whole
    assert len(fits) == 2 and rows["sasrec"]["from_cache"] is True


def test_an_unwritable_cache_is_logged_and_the_run_goes_on(tmp_path, fits, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="recsieve.evaluation"):
        rows, _ = run(toy(), ModelCache(blocker))
    assert len(fits) == 1 and rows["sasrec"]["from_cache"] is False
    assert any("could not write" in r.getMessage() for r in caplog.records)


def test_default_cache_dir_and_cli_options(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "recsieve" / "evaluate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "recsieve" / "evaluate"
    args = build_parser().parse_args(["evaluate", "--dataset", "custom", "--data-dir", "d"])
    assert args.cache_dir is None and args.no_cache is False and args.cold_items is None
    args = build_parser().parse_args(["evaluate", "--dataset", "custom", "--data-dir", "d", "--no-cache",
                                      "--cache-dir", "c", "--cold-items", "0.1"])
    assert args.no_cache and args.cache_dir == "c" and args.cold_items == 0.1
    sub = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    helps = {a.dest: a.help for a in sub._actions}
    assert all(helps[d] for d in ("cold_items", "cache_dir", "no_cache"))


def test_the_engine_system_is_cached_with_its_ablation(tmp_path, monkeypatch):
    """recsieve (context model + head) and its ablation: the second run trains nothing, scores the same."""
    calls = []
    real = recsieve.training.train_engine

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(recsieve.training, "train_engine", counting)
    data = tmp_path / "data"
    write_custom(data, n_items=30, n_users=60)
    kw = {"systems": "popularity,recsieve-without-refit,recsieve,recsieve-without-cross-encoder", "context_budget_s": 3.0,
          "ranker_users": None, "progress": False, "cache_dir": tmp_path / "cache", "embedder": WordHashEmbedder(32)}
    first = run_evaluation("custom", data, **kw)
    assert len(calls) == 1 and first["cache"]["from_cache"] == []
    assert first["cache"]["text_vectors"] == "embedded and cached"
    second = run_evaluation("custom", data, **kw)
    assert len(calls) == 1, "the second run trained again"
    assert second["cache"]["from_cache"] == ["recsieve", "recsieve-without-refit", "recsieve-without-cross-encoder"]
    assert second["cache"]["text_vectors"] == "from cache"
    a = {r["system"]: r for r in first["results"]}
    b = {r["system"]: r for r in second["results"]}
    for name in ("recsieve", "recsieve-without-cross-encoder", "recsieve-without-refit"):
        assert b[name]["ndcg@10"] == pytest.approx(a[name]["ndcg@10"]) and b[name]["hr@10"] == a[name]["hr@10"]
    assert b["recsieve"]["train_report"]["encoder"] == a["recsieve"]["train_report"]["encoder"]
    assert a["recsieve"]["train_report"]["refit"]["epochs"] >= 1  # the refit ran, and its ablation is served


def test_engine_settings_are_in_the_key_and_recall_only_is_not_cached():
    from recsieve.evaluation.systems import EngineSystem

    data, emb = toy(), WordHashEmbedder(32)
    base = {"embedder": emb, "context": True, "progress": False}
    settings = EngineSystem(data, **base).cache_settings()
    assert settings["embedder"].endswith("WordHashEmbedder(dim=32)")
    for other in ({"context_budget_s": 60.0}, {"ranker_users": 10}, {"ablation": True}, {"refit_ablation": True},
                  {"embedder": WordHashEmbedder(16)}):
        assert EngineSystem(data, **(base | other)).cache_settings() != settings, other
    assert EngineSystem(data, name="recsieve-recall", embedder=emb, rerank=False).cache_settings() is None


def test_no_cache_reads_and_writes_nothing(tmp_path):
    data = tmp_path / "data"
    write_custom(data)
    kw = {"systems": "popularity,text-zero-shot", "progress": False, "cache_dir": tmp_path / "cache",
          "embedder": WordHashEmbedder(32)}
    report = run_evaluation("custom", data, cache=False, **kw)
    assert "cache" not in report and "from_cache" not in report["results"][0]
    assert not (tmp_path / "cache").exists()
    report = run_evaluation("custom", data, **kw)
    assert report["cache"] == {"dir": str(tmp_path / "cache"), "from_cache": [], "text_vectors": "embedded and cached"}


def test_a_writer_that_finishes_second_keeps_the_first_entry(tmp_path, caplog):
    cache, key = ModelCache(tmp_path / "cache"), cache_key({"x": 1})

    def slow_write(folder):
        (folder / "x").write_text("second")
        cache.store(key, "toy-x", {}, lambda f: (f / "x").write_text("first"))  # another run, meanwhile

    with caplog.at_level(logging.WARNING, logger="recsieve.evaluation"):
        state = cache.store(key, "toy-x", {}, slow_write)
    assert (state / "x").read_text() == "first" and cache.lookup(key, "toy-x") == state
    assert not caplog.records and len(entries(cache)) == 1
    assert not list(cache.root.glob(".tmp-*"))  # its own copy was removed


def test_evaluate_split_refuses_a_cache_without_the_data_it_keys_on(tmp_path):
    from recsieve.errors import InvalidInputError
    from recsieve.evaluation.harness import evaluate_split
    from recsieve.evaluation.protocol import leave_one_out

    with pytest.raises(InvalidInputError, match="cache_parts"):
        evaluate_split(leave_one_out(toy()), tiny_sasrec(), cache=ModelCache(tmp_path), progress=False)


def test_candidates_come_from_the_ranking_call_and_match_a_fresh_recall(monkeypatch):
    """The harness asks for recall's candidates right after scoring the same users: the engine's
    ranking already recalled them, so they are not recalled twice, and they are the same items."""
    from recsieve.evaluation.protocol import leave_one_out, training_sequences
    from recsieve.evaluation.systems import EngineSystem

    data = toy(n_users=60, n_items=30, length=8)
    system = EngineSystem(data, embedder=WordHashEmbedder(32), train_ranker=True, ranker_users=None, progress=False)
    split = leave_one_out(data, min_len=5)
    system.fit(training_sequences(split, "test"), data.n_items)
    try:
        recalls = []
        real = system.engine.recall_view
        monkeypatch.setattr(system.engine, "recall_view", lambda *a, **k: recalls.append(1) or real(*a, **k))
        ctx = split.contexts("test")[:20]
        n = system.config.recall_n
        scores = system.score(ctx)
        kept = system.candidates(ctx, n)
        assert recalls == []  # taken from the ranking call
        fresh = system.candidates(list(ctx), n)  # other contexts (an equal list): recalled
        assert len(recalls) == len(ctx)
        for k, f, s in zip(kept, fresh, scores, strict=True):
            assert sorted(k.tolist()) == sorted(f.tolist()) and len(f) > 0
            assert set(np.flatnonzero(np.isfinite(s)).tolist()) == set(f.tolist())
        system.candidates(ctx, 5)  # another size: recalled
        assert len(recalls) == 2 * len(ctx)
    finally:
        system.close()
