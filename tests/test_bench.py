"""The benchmark harness: a tiny real run (no timing assertions) and its helpers on hand-made cases."""

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, object]:
    out = tmp_path_factory.mktemp("bench")
    result = run_bench(
        quick=True, json_out=out / "bench.json", plots_dir=out / "plots", threads=1, progress=False,
        sizes=(3000,), queries=30, lance_sizes=(3000,), engine_items=60, engine_users=30,
        engine_requests=8, load_seconds=0.15, rerank_pairs=8, summary=False,
    )
    return result, json.loads((out / "bench.json").read_text()), out / "plots"


# -------------------------------------------------------------------------- the tiny run


def test_json_has_headline_keys_and_machine(tiny):
    result, written, _ = tiny
    for key in (*HEADLINE_KEYS, "machine", "index", "engine", "rerank", "notes"):
        assert key in written, key
    assert written["machine"]["versions"]["faiss-cpu"]
    assert written["machine"]["threads"] == 1
    # the fast tier ran (a head trained on the generated users); no quality report: null, with the reason
    assert written["rerank_speedup_vs_naive"] > 0
    assert written["engine"]["ranking_head"]["train_users"] > 0
    assert written["rerank_ndcg_ratio"] is None
    assert any("rerank_ndcg_ratio" in n for n in written["notes"])
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


def test_engine_and_rerank_sections(tiny):
    _, written, _ = tiny
    eng = written["engine"]
    assert {"embed", "recall", "cache_hit", "cold_request", "rerank_fast"} <= set(eng["stages"])
    assert [r["threads"] for r in eng["throughput_uncached"]] == [1, 2, 4, 8]
    assert 0.0 <= eng["zipf"]["hit_ratio_steady"] <= 1.0
    assert eng["event_to_refresh"]["latency"]["n"] > 0
    for stage in ("embed", "embed_1_thread", "recall", "rerank_fast", "cache_hit", "cold_request"):
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
    # the fast tier's speed-up relates the rerank section's predict time to the engine's stage
    assert written["rerank_speedup_vs_naive"] == pytest.approx(
        rr["ms_per_100_pairs"] / eng["stages"]["rerank_fast"]["p50_ms"])


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
    report = {"dataset": "d", "users": 3, "results": [
        {"system": "recsieve-fast", "ndcg@10": 0.15},
        {"system": "recsieve", "ndcg@10": 0.20, "train_report": {"blend": 0.3}}]}
    q = quality_ratio(report)
    assert q["ratio"] == pytest.approx(0.75) and q["full_blend"] == 0.3
    with pytest.raises(InvalidInputError, match="recsieve-fast"):
        quality_ratio({"results": [{"system": "recsieve", "ndcg@10": 0.2}]})


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


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidInputError):
        run_bench(sections=("index", "nope"), progress=False, summary=False)
    with pytest.raises(InvalidInputError):
        run_bench(threads=0, progress=False, summary=False)
    with pytest.raises(InvalidInputError):
        run_bench(sizes=(50,), progress=False, summary=False)
