"""Approximate indexes against exact numpy search on clustered synthetic data.

6,007 unit vectors (dim 96) scattered around 50 centres, 101 queries from the same mixture;
recall@10 of every approximate kind must stay high on the plain index, under a filter, and
after removals and re-upserts (tombstones, compaction, LanceDB's unindexed rows).
"""

from __future__ import annotations

import numpy as np
import pytest

from recsieve.filters import parse_filter
from recsieve.indexes.base import SearchParams
from recsieve.indexes.faiss_index import FaissIndex
from recsieve.indexes.lance_index import LanceIndex

N, DIM, CENTRES, QUERIES, K = 6007, 96, 50, 101, 10

APPROX = {
    "faiss-hnsw": (lambda: FaissIndex(DIM, "hnsw"), 0.9),
    "faiss-ivf": (lambda: FaissIndex(DIM, "ivf"), 0.9),
    "lance-hnsw_sq": (lambda: LanceIndex(DIM, index_type="hnsw_sq"), 0.85),
    "lance-ivf_pq": (lambda: LanceIndex(DIM, index_type="ivf_pq"), 0.85),
}


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, CENTRES, n)
    x = centres[labels] + rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


class World:
    """The exact model: live ids, their vectors and metadata."""

    def __init__(self) -> None:
        x, labels = clustered(N + QUERIES, seed=42)
        self.vectors = {i: x[i] for i in range(N)}
        self.meta = {i: {"group": int(labels[i] % 3), "label": int(labels[i])} for i in range(N)}
        self.queries = x[N:]

    def exact(self, k: int, flt=None) -> np.ndarray:
        ids = np.array([i for i in self.vectors if flt is None or flt.matches(self.meta[i])])
        scores = self.queries @ np.stack([self.vectors[i] for i in ids]).T
        return ids[np.argsort(-scores, axis=1)[:, :k]]


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g.tolist()) & set(w.tolist())) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.mark.parametrize("name", list(APPROX))
def test_recall_plain_filtered_and_after_churn(name):
    make, threshold = APPROX[name]
    world = World()
    ids = np.arange(N)
    index = make()
    index.upsert(ids, np.stack([world.vectors[i] for i in ids]), [world.meta[i] for i in ids])
    if isinstance(index, LanceIndex):
        assert index.indexed  # above index_min_rows: the ANN index is in use
    else:
        assert index.trained

    _, got = index.search(world.queries, K)
    assert recall(got, world.exact(K)) >= threshold

    flt = parse_filter("group == 1")
    _, got = index.search(world.queries, K, filter=flt)
    assert all(world.meta[i]["group"] == 1 for i in got.ravel().tolist())
    assert recall(got, world.exact(K, flt)) >= threshold

    # churn: remove 30% (FAISS compacts past 25% dead), move 5% of the rest to fresh vectors
    rng = np.random.default_rng(7)
    removed = rng.choice(N, int(0.3 * N), replace=False)
    assert index.remove(removed) == len(removed)
    for i in removed.tolist():
        del world.vectors[i], world.meta[i]
    moved = rng.choice(sorted(world.vectors), int(0.05 * N), replace=False)
    fresh, labels = clustered(len(moved), seed=9)
    for i, v, lab in zip(moved.tolist(), fresh, labels.tolist(), strict=True):
        world.vectors[i], world.meta[i] = v, {"group": lab % 3, "label": lab}
    index.upsert(moved, fresh, [world.meta[i] for i in moved.tolist()])
    assert len(index) == len(world.vectors)
    if isinstance(index, FaissIndex):
        index.wait_for_compaction()  # it runs in the background, off the write lock
        assert index.positions < N  # compaction dropped the tombstones

    _, got = index.search(world.queries, K)
    assert not np.isin(got, removed).any()
    assert recall(got, world.exact(K)) >= threshold
    _, got = index.search(world.queries, K, filter=flt)
    assert all(world.meta[i]["group"] == 1 for i in got.ravel().tolist())
    assert recall(got, world.exact(K, flt)) >= threshold


def test_faiss_search_effort_matters():
    """The recall thresholds above can fail: starving HNSW/IVF of effort on unclustered data loses neighbours."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N + QUERIES, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids, vectors, queries = np.arange(N), x[:N], x[N:]
    want = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    ivf = FaissIndex(DIM, "ivf", nlist=64)
    ivf.upsert(ids, vectors)
    _, got = ivf.search(queries, K, params=SearchParams(nprobe=1))
    assert recall(got, want) < 0.9
    hnsw = FaissIndex(DIM, "hnsw", hnsw_m=4, ef_construction=8)
    hnsw.upsert(ids, vectors)
    _, got = hnsw.search(queries, K, params=SearchParams(ef_search=1))
    assert recall(got, want) < 0.9
