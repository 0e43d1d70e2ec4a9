"""Shared fixtures: real models, loaded once per test session."""

from __future__ import annotations

import pytest

from recsieve.embedding import SentenceTransformerEmbedder


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 bi-encoder (384 dims), loaded once."""
    emb = SentenceTransformerEmbedder()
    emb.dim  # noqa: B018 - load the weights here, not inside the first test that uses it
    return emb
