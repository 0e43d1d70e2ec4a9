"""The index section's text data: MiniLM vectors of generated item texts, cached per chunk."""

from __future__ import annotations

import numpy as np
import pytest

import recsieve.bench.text_vectors as tv
from recsieve.bench.common import ProgressBar, synthetic_items
from recsieve.bench.index import index_section
from recsieve.catalog import Catalog
from recsieve.errors import InvalidInputError


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(tv, "CHUNK", 64)


def test_vectors_are_the_texts_embeddings_cached_and_resumed(small_chunks, tmp_path, torch_embedder):
    base, queries, info = tv.text_vectors(150, 20, seed=3, cache_dir=tmp_path, backend="torch")
    assert base.shape == (150, 384) and queries.shape == (20, 384) and base.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    assert info["chunks_embedded"] == 3 + 1 and info["backend"] == "torch"

    # the base is seed 3's texts, the queries seed 4's: none of them is a base text
    render = Catalog().render
    texts, qtexts = [render(it) for it in synthetic_items(150, 3)], [render(it) for it in synthetic_items(20, 4)]
    assert not set(qtexts) & set(texts)
    want = torch_embedder.embed(texts[:64] + qtexts[:5])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(base[:64], want[:64], atol=1e-5)
    np.testing.assert_allclose(queries[:5], want[64:], atol=1e-5)

    # a second call embeds nothing; a smaller size reads the same prefix
    again, q2, info2 = tv.text_vectors(100, 20, seed=3, cache_dir=tmp_path, backend="torch")
    assert info2["chunks_embedded"] == 0
    np.testing.assert_array_equal(again, base[:100])
    np.testing.assert_array_equal(q2, queries)

    # a lost chunk (an interrupted run) is embedded again, and only it
    folder = next(p for p in tmp_path.iterdir() if p.name.startswith(f"{tv.CatalogTexts().key}-seed3-"))
    (folder / "00001.npy").unlink()
    third, _, info3 = tv.text_vectors(150, 20, seed=3, cache_dir=tmp_path, backend="torch")
    assert info3["chunks_embedded"] == 1
    np.testing.assert_allclose(third, base, atol=1e-6)
    assert not list(folder.glob(".*tmp*"))  # no temporary file left behind

    # a damaged chunk is named, not read
    (folder / "00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InvalidInputError, match="00000.npy"):
        tv.text_vectors(150, 20, seed=3, cache_dir=tmp_path, backend="torch")
    np.save(folder / "00000.npy", np.zeros((3, 384), np.float32))
    with pytest.raises(InvalidInputError, match="delete it"):
        tv.text_vectors(150, 20, seed=3, cache_dir=tmp_path, backend="torch")


def test_markov_texts_walk_the_corpus_bigrams_and_a_seed_is_a_stream(tmp_path):
    corpus = ["red kettle with lid", "blue kettle for tea", "tea cups set of four", "", "   "]
    source = tv.MarkovTexts(corpus, min_words=3, max_words=7)
    texts = source.texts(5, 40)
    assert texts[:10] == source.texts(5, 10) and texts != source.texts(6, 40)
    pairs = {(a, b) for t in corpus for a, b in zip(t.split(), t.split()[1:])}
    starts = {t.split()[0] for t in corpus if t.split()}
    for text in texts:
        words = text.split()
        assert 3 <= len(words) <= 7 and words[0] in starts
        # each step follows a corpus bigram, or restarts at a first word where nothing follows
        assert all((a, b) in pairs or b in starts for a, b in zip(words, words[1:]))
    assert len(set(texts)) > 10
    other = tv.MarkovTexts(corpus[:2], min_words=3, max_words=7)
    assert other.key != source.key  # another corpus, another cache folder

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(corpus), "utf-8")
    assert tv.read_corpus(path) == corpus[:3]
    for bad in ("", "  \n\n"):
        path.write_text(bad, "utf-8")
        with pytest.raises(InvalidInputError, match="text_corpus"):
            tv.read_corpus(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InvalidInputError, match="text_corpus"):
        tv.read_corpus(path)
    with pytest.raises(InvalidInputError, match="corpus"):
        tv.MarkovTexts(["", " "])


@pytest.mark.parametrize("n, queries", [(0, 5), (5, 0), (True, 5), (2.5, 5)])
def test_bad_sizes_are_refused(n, queries, tmp_path):
    with pytest.raises(InvalidInputError):
        tv.text_vectors(n, queries, seed=0, cache_dir=tmp_path, backend="torch")


def test_index_section_on_text_vectors(small_chunks, tmp_path, monkeypatch):
    """The section searches the text vectors (exhaustive IVF equals exact search on them)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default backend's export goes here
    cfg = {"sizes": (300,), "queries": 12, "hnsw_max_size": 0, "lance_sizes": (), "ivf_nprobe": (1, 2),
           "flat_queries_large": 12, "index_data": "text", "vector_cache": tmp_path / "vectors"}
    notes: list[str] = []
    out = index_section(cfg, 0, ProgressBar(1, False), notes)
    assert out["data"]["source"].startswith("MiniLM vectors") and out["data"]["backend"]
    rows = out["sizes"]["300"]["indexes"]["faiss_ivf"]["settings"]
    exhaustive = next(r for r in rows if r["setting"]["nprobe"] == out["sizes"]["300"]["indexes"]["faiss_ivf"]["nlist"])
    assert exhaustive["recall_at_100"] == 1.0
    assert (out["sizes"]["300"]["n"], out["sizes"]["300"]["queries"]) == (300, 12)
    sims = out["sizes"]["300"]["neighbour_similarity"]
    assert 1.0 >= sims["1"] >= sims["10"] >= sims["100"] > 0
    assert len(list((tmp_path / "vectors").iterdir())) == 2  # the base's and the queries' streams
    corpus = [f"{a} {b} for {c}" for a in ("red", "blue", "steel") for b in ("kettle", "pan", "drill")
              for c in ("tea", "home", "work")]
    markov = index_section({**cfg, "text_corpus": corpus}, 0, ProgressBar(1, False), notes)
    assert "MarkovTexts" in markov["data"]["source"]
    assert len(list((tmp_path / "vectors").iterdir())) == 4
    with pytest.raises(InvalidInputError, match="index_data"):
        index_section({**cfg, "index_data": "words"}, 0, ProgressBar(1, False), notes)


def test_run_bench_refuses_unknown_index_data_before_running(monkeypatch):
    import recsieve.bench as bench

    def must_not_run(*args, **kwargs):
        raise AssertionError("the index section ran")

    monkeypatch.setattr(bench, "_run_index", must_not_run)
    with pytest.raises(InvalidInputError, match="index_data"):
        bench.run_bench(sections=("index",), index_data="words", progress=False, summary=False)
    with pytest.raises(InvalidInputError, match="text_corpus"):  # a corpus only goes with text data
        bench.run_bench(sections=("index",), text_corpus=__file__, progress=False, summary=False)


def test_cli_names_bad_index_options(capsys):
    from recsieve.cli import main

    assert main(["bench", "--sections", "index", "--index-sizes", "10k,100k", "--quiet"]) != 0
    assert "index_sizes" in capsys.readouterr().err
    assert main(["bench", "--sections", "index", "--text-corpus", __file__, "--quiet"]) != 0
    assert "text_corpus" in capsys.readouterr().err


@pytest.mark.parametrize("data, words", [("clustered", "recall (clustered vectors)"),
                                         ("text", "recall (MiniLM text vectors)")])
def test_summary_names_the_data_the_recall_was_measured_on(data, words):
    from recsieve.bench.report import format_summary

    result = {"machine": {"cpu_model": "cpu", "usable_cpus": 2}, "quick": True, "threads": 2, "wall_s": 1.0,
              "load_avg": {"start": None, "end": None}, "parameters": {"index_data": data},
              "recall_default": {"size": 1000, "index": "faiss_ivf", "setting": {"nprobe": 2}, "recall_at_100": 0.97,
                                 "latency": {"p50_ms": 0.1, "p99_ms": 0.2}, "speedup_p50_vs_flat": 3.0},
              "cold_p95_ms": None, "hot_p99_ms": None, "rerank_speedup_vs_naive": None, "rerank_ndcg_ratio": None}
    assert words in format_summary(result)
