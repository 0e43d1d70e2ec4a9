"""Property tests: random upsert/remove/search sequences agree with a simple exact model.

The model is a dict id -> (vector, metadata) searched by brute force; the exact indexes
(FAISS flat, LanceDB without an ANN index) must return the same ids and scores.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsieve.filters import parse_filter
from recsieve.indexes.faiss_index import FaissIndex
from recsieve.indexes.lance_index import LanceIndex

DIM = 8
MAX_ID = 24
FILTERS = [None, "g == 1", "g != 0 and w < 0.5", "not (tag in ('x', 'y'))", "w >= 0.25 or tag == 'z'"]

ids_st = st.lists(st.integers(0, MAX_ID), min_size=0, max_size=8, unique=True)
op_st = st.one_of(
    st.tuples(st.just("upsert"), ids_st, st.integers(0, 2**31)),
    st.tuples(st.just("remove"), st.lists(st.integers(0, MAX_ID + 5), max_size=6), st.just(0)),
    st.tuples(
        st.just("search"),
        st.tuples(st.integers(1, MAX_ID + 5), st.sampled_from(FILTERS), ids_st),
        st.integers(0, 2**31),
    ),
)


def vectors_and_meta(ids: list[int], seed: int) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng([seed, *ids])  # two upserts of other ids with one seed: no tied vectors
    x = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = []
    for _j in range(len(ids)):
        m = {"g": int(rng.integers(0, 3)), "w": float(rng.random())}
        if rng.random() < 0.7:  # some items have no tag
            m["tag"] = str(rng.choice(["x", "y", "z"]))
        meta.append(m)
    return x, meta


def check_against_model(index, ops) -> None:
    model: dict[int, tuple[np.ndarray, dict]] = {}
    for kind, arg, seed in ops:
        if kind == "upsert":
            x, meta = vectors_and_meta(arg, seed)
            index.upsert(np.array(arg, dtype=np.int64), x, meta)
            model.update({i: (x[j], meta[j]) for j, i in enumerate(arg)})
        elif kind == "remove":
            removed = index.remove(arg)
            assert removed == len(set(arg) & set(model))
            for i in arg:
                model.pop(i, None)
        else:
            k, expr, exclude = arg
            flt = parse_filter(expr)
            q = np.random.default_rng(seed).normal(size=(2, DIM)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            scores, ids = index.search(q, k, filter=flt, exclude=exclude)
            ok = [i for i, (_, m) in model.items() if i not in exclude and (flt is None or flt.matches(m))]
            want_s = q @ np.stack([model[i][0] for i in ok]).T if ok else np.zeros((2, 0), np.float32)
            order = np.argsort(-want_s, axis=1)[:, :k]
            n = min(k, len(ok))
            assert np.array_equal(ids[:, :n], np.array(ok, dtype=np.int64)[order] if ok else ids[:, :0])
            assert np.allclose(scores[:, :n], np.take_along_axis(want_s, order, axis=1), atol=1e-5)
            assert (ids[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()
        assert len(index) == len(model)
        assert all(i in index for i in model)


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(ops=st.lists(op_st, min_size=1, max_size=12))
def test_faiss_flat_matches_model(ops):
    check_against_model(FaissIndex(DIM, "flat", compact_at=0.3), ops)


@PROPERTY
@given(ops=st.lists(op_st, min_size=1, max_size=12))
def test_faiss_hnsw_small_matches_model(ops):
    """Below ``exact_below`` HNSW answers exactly, through tombstones and compactions."""
    check_against_model(FaissIndex(DIM, "hnsw", compact_at=0.3), ops)


@PROPERTY
@given(ops=st.lists(op_st, min_size=1, max_size=8))
def test_lance_exact_matches_model(ops):
    check_against_model(LanceIndex(DIM, index_type="none"), ops)
