"""The benchmark harness: a tiny real run (no timing thresholds: only the keys and the relations
between measured parts) and its helpers on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsieve.bench import (
    HEADLINE_KEYS,
    RECALL_TARGET,
    clustered_vectors,
    encoder_flops,
    exact_topk,
    latency_summary,
    pick_default,
    quality_ratio,
    recall_at_k,
    run_bench,
)
from recsieve.errors import InvalidInputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _quality_report() -> dict:
    """A hand-made evaluation report as ``recsieve evaluate --json`` writes it: the fine sieve
    (``recsieve``, trained with the context model) and two other re-rankers of its candidates."""
    return {"dataset": "d", "users": 3, "results": [
        {"system": "recsieve-recall", "ndcg@10": 0.10},
        {"system": "recsieve-fast", "ndcg@10": 0.15, "train_report": {"blend": 0.0, "cross_encoder": "ce"},
         "vs_recsieve": {"ndcg@10": {"mean": -0.04, "ci95": [-0.06, -0.01], "users": 3}}},
        {"system": "recsieve", "ndcg@10": 0.20, "train_report": {"encoder": {"epochs": 3}, "scorer": {"steps": 9}}},
        {"system": "recsieve-without-cross-encoder", "ndcg@10": 0.16,
         "vs_recsieve": {"ndcg@10": {"mean": -0.05, "ci95": [-0.08, -0.02], "users": 3}}},
        {"system": "sasrec", "ndcg@10": 0.30}]}  # not a re-ranker of recall's candidates: not compared


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, object]:
    out = tmp_path_factory.mktemp("bench")
    (out / "quality.json").write_text(json.dumps(_quality_report()))
    result = run_bench(
        quick=True, json_out=out / "bench.json", plots_dir=out / "plots", threads=1, progress=False,
        sizes=(3000,), queries=30, lance_sizes=(3000,), engine_items=60, engine_users=30,
        engine_requests=8, context_users=40, context_budget_s=2.0, load_seconds=0.15, rerank_pairs=8,
        quality_report=out / "quality.json", summary=False, embedding_backend="torch",
    )
    return result, json.loads((out / "bench.json").read_text()), out / "plots"


# -------------------------------------------------------------------------- the tiny run


def test_json_has_headline_keys_and_machine(tiny):
    result, written, _ = tiny
    for key in (*HEADLINE_KEYS, "machine", "index", "engine", "rerank", "notes"):
        assert key in written, key
    assert written["machine"]["versions"]["faiss-cpu"]
    assert written["machine"]["threads"] == 1
    assert written["engine"]["config"]["embedding_backend"] == "torch"  # as asked, not the default auto
    # the context model served: trained in the run (encoder, candidate scorer, head stacking both)
    for key in ("context_encoder_p95_ms", "fine_sieve_p95_ms", "cold_p95_ms", "rerank_speedup_vs_naive"):
        assert written[key] > 0, key
    model = written["engine"]["context_model"]
    assert model["encoder_users"] > 0 and model["scorer_examples"] > 0 and model["head"]["train_users"] > 0
    from recsieve.training.model import CONTEXT_DIM

    assert model["dim"] == CONTEXT_DIM  # the width the served model has: the library's default
    assert {"context.context_encoder", "context.context_cross"} <= set(model["head_features"])
    # the thread counts are recorded: the context model serves on its own (1), the run pins 1 here
    assert model["inference_threads"] == written["engine"]["context_stages"]["inference_threads"] == 1
    assert model["torch_threads_pinned"] == 1
    # the headline recall, recomputed from the index section's rows: of the approximate settings
    # at the largest size reaching the target, the one with the lowest p99 (none: the best recall)
    rows = [r for name, idx in written["index"]["sizes"]["3000"]["indexes"].items()
            if not name.endswith("_flat") for r in idx["settings"]]
    good = [r for r in rows if r["recall_at_100"] >= RECALL_TARGET]
    headline = min(good, key=lambda r: r["latency"]["p99_ms"]) if good else max(rows, key=lambda r: r["recall_at_100"])
    assert written["recall_at_100_vs_exact"] == headline["recall_at_100"]
    assert written["recall_p99_ms"] == headline["latency"]["p99_ms"]
    assert result["recall_default"]["meets_target"] == bool(good)


def test_headline_recall_is_the_fastest_setting_meeting_the_target():
    def row(setting, recall, p99):
        return {"setting": setting, "recall_at_100": recall, "latency": {"p99_ms": p99}}

    section = {"sizes": {"1000": {"indexes": {"faiss_flat": {"settings": [row({}, 1.0, 0.1)]}}},
                         "50000": {"indexes": {
                             "faiss_flat": {"settings": [row({}, 1.0, 0.5)]},  # exact: never the headline
                             "faiss_hnsw": {"settings": [row({"ef_search": 64}, RECALL_TARGET - 0.01, 0.2),
                                                         row({"ef_search": 512}, 0.99, 3.0)]},
                             "faiss_ivf": {"settings": [row({"nprobe": 4}, 0.999, 1.2),
                                                        row({"nprobe": 1}, 0.80, 0.1)]}}}}}
    chosen = pick_default(section)
    assert (chosen["size"], chosen["index"], chosen["setting"], chosen["meets_target"]) == (
        50000, "faiss_ivf", {"nprobe": 4}, True)
    for idx in section["sizes"]["50000"]["indexes"].values():  # nothing reaches the target: best recall
        for r in idx["settings"]:
            r["recall_at_100"] = min(r["recall_at_100"], 0.9)
    section["sizes"]["50000"]["indexes"]["faiss_hnsw"]["settings"][1]["recall_at_100"] = 0.93
    chosen = pick_default(section)
    assert (chosen["index"], chosen["recall_at_100"], chosen["meets_target"]) == ("faiss_hnsw", 0.93, False)


def test_recalls_are_fractions_and_exact_search_is_exact(tiny):
    _, written, _ = tiny
    indexes = written["index"]["sizes"]["3000"]["indexes"]
    assert set(indexes) >= {"faiss_flat", "faiss_hnsw", "faiss_ivf", "lance_hnsw_sq"}
    for name, idx in indexes.items():
        assert idx["settings"], name
        for row in idx["settings"]:
            assert 0.0 <= row["recall_at_100"] <= 1.0, (name, row)
    # FAISS flat is exact: it must agree with numpy brute force
    assert indexes["faiss_flat"]["settings"][0]["recall_at_100"] == pytest.approx(1.0, abs=1e-3)
    # IVF probing every list is exhaustive, so exact as well
    ivf = indexes["faiss_ivf"]
    full = [r for r in ivf["settings"] if r["setting"]["nprobe"] == ivf["nlist"]]
    assert full and full[0]["recall_at_100"] == pytest.approx(1.0, abs=1e-3)
    # settings probing too few items for k=100 (answered exactly by FaissIndex) are left out
    assert all(r["setting"]["nprobe"] * 3000 / ivf["nlist"] >= 400 for r in ivf["settings"])


CONTEXT_STAGES = ("context_encoder", "candidate_scorer", "fine_sieve", "fine_sieve_100", "fine_sieve_1_thread")


def test_context_model_headlines_are_its_measured_stages(tiny):
    _, written, _ = tiny
    stages = written["engine"]["stages"]
    for stage in (*CONTEXT_STAGES, "cold_request"):
        s = stages[stage]
        assert s["n"] == 8, stage  # engine_requests timed requests each (after a warm-up)
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"], stage
    assert written["context_encoder_p95_ms"] == stages["context_encoder"]["p95_ms"]
    assert written["fine_sieve_p95_ms"] == stages["fine_sieve"]["p95_ms"]
    assert written["cold_p95_ms"] == stages["cold_request"]["p95_ms"]
    cs = written["engine"]["context_stages"]
    # the fine sieve orders what recall gave (up to recall_n, 200, and up to 100 for the speed-up)
    assert 0 < cs["candidates_mean"]["fine_sieve_100"] <= 100
    assert cs["candidates_mean"]["fine_sieve_100"] <= cs["candidates_mean"]["fine_sieve"] <= cs["recall_n"] == 200
    assert 0 < cs["events_read_mean"] <= cs["max_len"] == 50
    assert cs["torch_threads"] == written["threads"] == 1  # the run's pinned count, restored after each stage
    # the speed-up is predict's time on 100 pairs over the serving fine sieve's on 100 candidates,
    # both from this run (never a ratio of a stage with itself)
    rr = written["rerank"]
    assert rr["fine_sieve"]["p50_ms"] == stages["fine_sieve_100"]["p50_ms"]
    assert written["rerank_speedup_vs_naive"] == pytest.approx(rr["ms_per_100_pairs"] / rr["fine_sieve"]["p50_ms"])
    assert "rerank_fast" not in stages and "fast_tier" not in rr  # renamed: the fine sieve


def test_rerank_ndcg_ratio_compares_the_fine_sieve_with_the_best_other_reranker(tiny):
    _, written, _ = tiny
    q = written["rerank_quality"]
    assert [c["system"] for c in q["compared"]] == ["recsieve-without-cross-encoder", "recsieve-fast"]
    assert q["best"] == "recsieve-without-cross-encoder" and q["fine_sieve"]["system"] == "recsieve"
    assert written["rerank_ndcg_ratio"] == q["ratio"] == pytest.approx(0.20 / 0.16)
    assert q["fine_minus_best"] == {"mean": 0.05, "ci95": [0.02, 0.08], "users": 3}
    assert any(n.startswith("rerank_ndcg_ratio: fine sieve") for n in written["notes"])


def test_engine_and_rerank_sections(tiny):
    _, written, _ = tiny
    eng = written["engine"]
    assert {"embed", "recall", "cache_hit", "cold_request", *CONTEXT_STAGES} <= set(eng["stages"])
    assert [r["threads"] for r in eng["throughput_uncached"]] == [1, 2, 4, 8]
    assert 0.0 <= eng["zipf"]["hit_ratio_steady"] <= 1.0
    assert eng["event_to_refresh"]["latency"]["n"] > 0
    for stage in ("embed", "embed_1_thread", "recall", "cache_hit", "cold_request"):
        assert eng["stages"][stage]["n"] == 8, stage  # engine_requests timed requests each
    rr = written["rerank"]
    assert rr["pairs"] == 8 and rr["tokens_mean"] > 0
    assert rr["ms_per_100_pairs"] == pytest.approx(rr["seconds"] / rr["pairs"] * 100 * 1000)
    # MFU recomputed from its measured parts: FLOPs of all pairs / predict's seconds / GEMM peak
    mfu = rr["gflop_per_pair"] * rr["pairs"] / rr["seconds"] / rr["gemm_peak"]["best_gflops"]
    assert 0.0 < written["rerank_mfu"] == pytest.approx(mfu)
    # FLOPs per pair lie between those of a pair of mean length and of the longest pair
    # (attention is quadratic in length, so the mean pair costs at least a mean-length one)
    per_pair, shape = rr["gflop_per_pair"] * 1e9, (rr["layers"], rr["hidden"], rr["intermediate"])
    assert encoder_flops([rr["tokens_mean"]], *shape) <= per_pair * (1 + 1e-9)
    assert per_pair <= encoder_flops([rr["tokens_max"]], *shape) * (1 + 1e-9)


def test_plots_are_png_files(tiny):
    import matplotlib.pyplot as plt

    _, written, plots = tiny
    names = {p.name for p in plots.iterdir()}
    assert {"latency_cdf.png", "recall_vs_latency.png", "throughput.png"} <= names
    for name in names:
        data = (plots / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        image = plt.imread(plots / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


# -------------------------------------------------------------------------- helpers


def test_quality_ratio_from_an_evaluation_report():
    report = _quality_report()
    q = quality_ratio(report)
    assert q["ratio"] == pytest.approx(0.20 / 0.16) and q["best_ndcg@10"] == 0.16
    assert "MiniLM cross-encoder" in q["compared"][1]["what"]  # recsieve-fast ran with one
    # the best other re-ranker wins whichever it is; sasrec (not a re-ranker) is never compared
    report["results"][1]["ndcg@10"] = 0.25
    q = quality_ratio(report)
    assert (q["best"], q["ratio"]) == ("recsieve-fast", pytest.approx(0.20 / 0.25))
    assert q["fine_minus_best"]["mean"] == pytest.approx(0.04)
    # only the fine sieve: nothing to compare it with, never a ratio of it with itself
    alone = {"results": [r for r in report["results"] if r["system"] == "recsieve"]}
    q = quality_ratio(alone)
    assert q["ratio"] is None and q["compared"] == [] and "no other re-ranker" in q["note"]
    # a report from before the context model: its 'recsieve' row is not the fine sieve
    old = {"results": [{"system": "recsieve-fast", "ndcg@10": 0.15},
                       {"system": "recsieve", "ndcg@10": 0.15, "train_report": {"blend": 0.0}}]}
    q = quality_ratio(old)
    assert q["ratio"] is None and "without the context model" in q["note"]
    with pytest.raises(InvalidInputError, match="recsieve"):
        quality_ratio({"results": [{"system": "recsieve-fast", "ndcg@10": 0.2}]})


def test_recall_at_k_hand_computed():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])  # 2 of 4, then 4 of 4; -1 padding never counts
    assert recall_at_k(found, truth) == pytest.approx(6 / 8)
    with pytest.raises(InvalidInputError):
        recall_at_k(found[:1], truth)


def test_exact_topk_matches_a_full_sort():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((257, 8)).astype(np.float32)
    queries = rng.standard_normal((13, 8)).astype(np.float32)
    got = exact_topk(base, queries, k=10, chunk=5)  # awkward chunk: 13 = 5 + 5 + 3
    want = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    np.testing.assert_array_equal(got, want)


def test_clustered_vectors_are_normalised_deterministic_and_apart():
    base, queries = clustered_vectors(500, 20, dim=16, seed=5, groups=3, clusters=12)
    assert base.shape == (500, 16) and queries.shape == (20, 16) and base.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    again, _ = clustered_vectors(500, 20, dim=16, seed=5, groups=3, clusters=12)
    np.testing.assert_array_equal(base, again)
    # clustered: each query's best neighbour is much closer than the typical base vector
    sims = queries @ base.T
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.3
    assert sims.max() < 0.9999  # queries are not copies of base vectors


def test_latency_summary_in_milliseconds():
    s = latency_summary([0.001] * 99 + [0.101])
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(101.0)
    assert s["mean_ms"] == pytest.approx(2.0)
    assert s["n"] == 100
    with pytest.raises(InvalidInputError):
        latency_summary([])


def test_encoder_flops_hand_computed():
    # one layer, h=2, i=4, one sequence of 3 tokens: 2*3*(4*4 + 2*2*4 + 2*3*2) = 6*44 = 264
    assert encoder_flops([3], layers=1, hidden=2, intermediate=4) == 264
    assert encoder_flops([3, 3], layers=2, hidden=2, intermediate=4) == 4 * 264


def test_hnsw_ef_construction_reaches_the_built_index():
    """``ef_construction`` builds every size's HNSW with it (the default: 200 up to 20k items)."""
    kw = dict(sections=("index",), sizes=(300,), queries=12, lance_sizes=(), progress=False, summary=False)
    got = run_bench(ef_construction=17, **kw)
    assert got["parameters"]["ef_construction_by_size"] == {"300": 17}
    assert got["index"]["sizes"]["300"]["indexes"]["faiss_hnsw"]["ef_construction"] == 17
    default = run_bench(**kw)
    assert default["index"]["sizes"]["300"]["indexes"]["faiss_hnsw"]["ef_construction"] == 200
    with pytest.raises(InvalidInputError, match="ef_construction"):
        run_bench(ef_construction=0, **kw)


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidInputError):
        run_bench(sections=("index", "nope"), progress=False, summary=False)
    with pytest.raises(InvalidInputError):
        run_bench(threads=0, progress=False, summary=False)
    with pytest.raises(InvalidInputError):
        run_bench(sizes=(50,), progress=False, summary=False)
    with pytest.raises(InvalidInputError):
        run_bench(context_budget_s=0, progress=False, summary=False)
    with pytest.raises(InvalidInputError, match="embedding_backend"):
        run_bench(sections=("engine",), embedding_backend="fp16", progress=False, summary=False)


def test_a_quality_report_without_the_fine_sieve_is_refused_before_the_run(tmp_path, monkeypatch):
    import recsieve.bench as bench

    def must_not_run(*args, **kwargs):
        raise AssertionError("a section ran before the quality report was checked")

    monkeypatch.setattr(bench, "_run_index", must_not_run)
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"results": [{"system": "recsieve-fast", "ndcg@10": 0.2}]}))
    with pytest.raises(InvalidInputError, match="recsieve"):
        run_bench(sections=("index",), quality_report=path, progress=False, summary=False)
