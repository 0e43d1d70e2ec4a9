"""One contract suite for every :class:`VectorIndex` implementation.

Fixtures have a known right answer: random unit vectors (no ties) with hand-made metadata,
checked against exact numpy search and :meth:`Filter.matches`. Exact kinds must agree with
brute force exactly; approximate kinds must return only qualifying items, with high overlap.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from recsieve.errors import CorruptStoreError, DuplicateIdError, InvalidInputError, StoreError
from recsieve.filters import parse_filter
from recsieve.indexes.base import SearchParams, VectorIndex
from recsieve.indexes.faiss_index import FaissIndex
from recsieve.indexes.lance_index import LanceIndex

DIM = 16
N = 300  # LanceDB needs >= 256 rows to train its ANN indexes

# name -> (factory, exact). Small exact_below / train_min so the ANN code paths run at toy sizes;
# IVF with nprobe == nlist scans every list, so it is exact.
IMPLS = {
    "faiss-flat": (lambda: FaissIndex(DIM, "flat"), True),
    "faiss-hnsw": (lambda: FaissIndex(DIM, "hnsw", hnsw_m=16, exact_below=4), False),
    "faiss-ivf": (lambda: FaissIndex(DIM, "ivf", nlist=4, nprobe=4, train_min=100, exact_below=4), True),
    "lance-none": (lambda: LanceIndex(DIM, index_type="none"), True),
    "lance-hnsw_sq": (lambda: LanceIndex(DIM, index_type="hnsw_sq", index_min_rows=256), False),
    "lance-ivf_pq": (lambda: LanceIndex(DIM, index_type="ivf_pq", index_min_rows=256, num_partitions=2), False),
}

FILTERS = [
    'category == "a"',
    "price < 20",
    'price >= 10 and category in ("b", "c")',
    "not (in_stock == true)",
    "in_stock == false or price > 45",
    "missing_field == 1",  # unknown field: nothing matches
    "not (missing_field == 1)",  # still unknown
    'price == "cheap"',  # wrong kind of literal: unknown
    'category not in ("a", 5)',  # 5 is unknown against strings, so nothing can be TRUE
    "price in ()",
    "not (price in ())",  # unknown for items without price, true for the others
    "rare == 1",  # matches 4 items only
]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_meta(i: int) -> dict:
    meta = {"category": "abc"[i % 3], "in_stock": i % 2 == 0}
    if i % 7:  # every 7th item has no price
        meta["price"] = float(i % 50) if i % 2 else i % 50  # ints and floats are both numbers
    if i % 75 == 0:
        meta["rare"] = 1
    return meta


class Data:
    """The fixture: ids are sparse (3i + 1), so positions and ids differ."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.ids = np.arange(N, dtype=np.int64) * 3 + 1
        self.vectors = unit(rng, N)
        self.meta = [make_meta(i) for i in range(N)]
        self.queries = unit(rng, 7)

    def exact(self, queries, k, flt=None, exclude=(), removed=()):
        """Brute-force top-k ids and scores."""
        scores = queries @ self.vectors.T
        bad = np.array([
            (flt is not None and not flt.matches(m)) or int(i) in set(exclude) or int(i) in set(removed)
            for i, m in zip(self.ids, self.meta, strict=True)
        ])
        scores[:, bad] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        return top, np.where(np.isfinite(top), self.ids[order], -1)


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


@pytest.fixture(params=list(IMPLS))
def impl(request) -> tuple[str, bool]:
    return request.param, IMPLS[request.param][1]


@pytest.fixture
def index(impl, data) -> VectorIndex:
    idx = IMPLS[impl[0]][0]()
    idx.upsert(data.ids, data.vectors, data.meta)
    return idx


def is_exact(impl) -> bool:
    return impl[1]


def recall(got: np.ndarray, want: np.ndarray) -> float:
    hits = sum(len(set(g[g >= 0]) & set(w[w >= 0])) for g, w in zip(got, want, strict=True))
    total = int((want >= 0).sum())
    return hits / total if total else 1.0


def check_shape(scores, ids, n, k):
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (n, k)
    valid = ids >= 0
    assert np.all(np.isneginf(scores[~valid]))
    assert np.all(np.isfinite(scores[valid]))
    for row_s, row_v in zip(scores, valid, strict=True):  # valid results first, best first
        assert not np.any(row_v[1:] & ~row_v[:-1])
        assert np.all(np.diff(row_s[row_v]) <= 1e-6)


def test_ann_index_built(impl, index):
    if impl[0].startswith("lance-") and impl[0] != "lance-none":
        assert index.indexed
    if impl[0] == "faiss-ivf":
        assert index.trained


def test_top_k_agrees_with_exact_search(impl, index, data):
    scores, ids = index.search(data.queries, 10)
    check_shape(scores, ids, len(data.queries), 10)
    want_s, want_i = data.exact(data.queries, 10)
    assert len(index) == N
    if is_exact(impl):
        assert np.array_equal(ids, want_i)
        assert np.allclose(scores, want_s, atol=1e-5)
    else:
        assert recall(ids, want_i) >= 0.8
        true = np.einsum("qd,qkd->qk", data.queries, data.vectors[(ids - 1) // 3])
        assert np.allclose(scores, true, atol=0.05)


def test_single_vector_query_and_contains(index, data):
    _, ids = index.search(data.vectors[5], 1)
    assert ids.shape == (1, 1) and ids[0, 0] == data.ids[5]
    assert data.ids[5] in index and np.int64(data.ids[5]) in index
    assert 0 not in index and 2 not in index and "1" not in index and -1 not in index


def test_upsert_replaces_vector_and_metadata(impl, index, data):
    q = data.queries[:1]
    target = int(data.ids[10])
    index.upsert([target], q, [{"category": "zzz", "price": 999}])
    assert len(index) == N
    scores, ids = index.search(q, 3)
    assert ids[0, 0] == target and scores[0, 0] == pytest.approx(1.0, abs=0.02)
    _, ids = index.search(q, N, filter=parse_filter('category == "zzz"'))
    assert ids[0].tolist() == [target] + [-1] * (N - 1)
    _, ids = index.search(data.vectors[10], 5, filter=parse_filter("in_stock == true"))
    assert target not in ids  # old metadata is gone (the item had in_stock=True)
    index.upsert([target], data.vectors[10:11])  # no metadata: replaced by none
    _, ids = index.search(q, N, filter=parse_filter('category == "zzz"'))
    assert (ids == -1).all()


def test_new_metadata_field_later_is_filterable(index, data):
    index.upsert(data.ids[:3], data.vectors[:3], [{"colour": "red"}, {"colour": "blue"}, {}])
    _, ids = index.search(data.queries, 5, filter=parse_filter('colour == "red"'))
    assert (ids[:, 0] == data.ids[0]).all() and (ids[:, 1:] == -1).all()


def test_remove_never_returned_also_after_reload(impl, index, data, tmp_path):
    _, top = data.exact(data.queries, 5)
    gone = np.unique(top[:, :3])
    assert index.remove(np.concatenate([gone, [2, 10**9]])) == len(gone)  # unknown ids ignored
    assert index.remove(gone) == 0
    assert len(index) == N - len(gone)
    assert all(int(i) not in index for i in gone)
    scores, ids = index.search(data.queries, 10)
    check_shape(scores, ids, len(data.queries), 10)
    assert not np.isin(ids, gone).any()
    _, want = data.exact(data.queries, 10, removed=gone.tolist())
    if is_exact(impl):
        assert np.array_equal(ids, want)
    index.save(tmp_path / "idx")
    loaded = type(index).load(tmp_path / "idx")
    assert len(loaded) == N - len(gone)
    _, ids2 = loaded.search(data.queries, 10)
    assert not np.isin(ids2, gone).any()
    assert np.array_equal(ids, ids2)


@pytest.mark.parametrize("expr", FILTERS)
def test_filters_never_violated_and_exact_where_exact(impl, index, data, expr):
    flt = parse_filter(expr)
    k = 20
    scores, ids = index.search(data.queries, k, filter=flt)
    check_shape(scores, ids, len(data.queries), k)
    meta_of = dict(zip(data.ids.tolist(), data.meta, strict=True))
    assert all(flt.matches(meta_of[i]) for i in ids[ids >= 0].tolist())
    n_match = sum(flt.matches(m) for m in data.meta)
    assert ((ids >= 0).sum(axis=1) == min(k, n_match)).all()  # no post-filter shortfall
    _, want = data.exact(data.queries, k, flt)
    if is_exact(impl):
        assert np.array_equal(ids, want)
    else:
        assert recall(ids, want) >= 0.75


def test_exclude_honoured(impl, index, data):
    _, top = data.exact(data.queries[:1], 5)
    scores, ids = index.search(data.queries[:1], 10, exclude=top[0])
    assert not np.isin(ids, top).any()
    assert (ids >= 0).all()
    _, want = data.exact(data.queries[:1], 10, exclude=top[0].tolist())
    if is_exact(impl):
        assert np.array_equal(ids, want)
    flt = parse_filter('category == "a"')
    _, ids = index.search(data.queries[:1], N, filter=flt, exclude=data.ids[::2])
    n_left = sum(1 for i, m in enumerate(data.meta) if i % 2 and flt.matches(m))
    assert (ids >= 0).sum() == n_left and not np.isin(ids, data.ids[::2]).any()


def test_padding_when_k_exceeds_size(impl, data):
    idx = IMPLS[impl[0]][0]()
    scores, ids = idx.search(data.queries[:2], 4)  # empty index
    assert (ids == -1).all() and np.isneginf(scores).all()
    idx.upsert(data.ids[:5], data.vectors[:5], data.meta[:5])
    scores, ids = idx.search(data.queries[:2], 8)
    check_shape(scores, ids, 2, 8)
    want_s, want_i = data.exact(data.queries[:2], 5, removed=data.ids[5:].tolist())
    assert np.array_equal(ids[:, :5], want_i) and (ids[:, 5:] == -1).all()
    assert np.allclose(scores[:, :5], want_s, atol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        lambda d: ([10**6], np.ones((1, DIM + 1), np.float32), None),  # wrong dimension
        lambda d: ([10**6, 10**6 + 1], np.vstack([d.vectors[:1], np.full((1, DIM), np.nan)]), None),
        lambda d: ([5, 5], d.vectors[:2], None),  # duplicate ids
        lambda d: ([-3], d.vectors[:1], None),  # negative id
        lambda d: ([1.5], d.vectors[:1], None),  # not an integer
        lambda d: ([1, 2], d.vectors[:1], None),  # count mismatch
        lambda d: ([10**6], d.vectors[:1], [{"tags": ["x", "y"]}]),  # non-scalar metadata
        lambda d: ([10**6], d.vectors[:1], [{"price": "cheap"}]),  # price holds numbers here
        lambda d: ([10**6], d.vectors[:1], [{"id": 3}]),  # reserved name
        lambda d: ([10**6], d.vectors[:1], [{}, {}]),  # metadata count mismatch
    ],
)
def test_bad_upserts_raise_and_change_nothing(index, data, bad):
    before = index.search(data.queries, 10, filter=parse_filter("price < 30"))
    with pytest.raises(InvalidInputError):
        index.upsert(*bad(data))
    assert len(index) == N and 10**6 not in index
    after = index.search(data.queries, 10, filter=parse_filter("price < 30"))
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])


def test_duplicate_ids_error_type(index, data):
    with pytest.raises(DuplicateIdError) as err:
        index.upsert([7, 9, 7], data.vectors[:3])
    assert err.value.field == "ids" and 7 in err.value.value


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_and_queries(index, data, k):
    with pytest.raises(InvalidInputError):
        index.search(data.queries, k)


def test_bad_queries_and_exclude(index, data):
    with pytest.raises(InvalidInputError):
        index.search(np.ones((1, DIM - 1), np.float32), 3)
    with pytest.raises(InvalidInputError):
        index.search(np.full((1, DIM), np.inf, np.float32), 3)
    with pytest.raises(InvalidInputError):
        index.search(data.queries, 3, exclude=[-1])
    with pytest.raises(InvalidInputError):
        index.remove([1.0])
    with pytest.raises(InvalidInputError):
        index.search(data.queries, 3, params=SearchParams(ef_search=0))


def test_save_load_round_trip(impl, index, data, tmp_path):
    index.remove(data.ids[::5])
    index.upsert(data.ids[1:4], data.queries[:3], [{"category": "new"}] * 3)
    flt = parse_filter('category in ("a", "new")')
    before = index.search(data.queries, 10, filter=flt)
    index.save(tmp_path / "idx")
    loaded = type(index).load(tmp_path / "idx")
    assert len(loaded) == len(index) and loaded.dim == DIM
    after = loaded.search(data.queries, 10, filter=flt)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0], atol=1e-6)
    loaded.upsert([10**6], data.queries[:1])  # writes to the loaded copy leave the saved folder alone
    again = type(index).load(tmp_path / "idx")
    assert 10**6 not in again and len(again) == len(index)


def test_save_needs_an_empty_folder_and_load_an_existing_one(index, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError):
        index.save(tmp_path / "full")
    with pytest.raises(StoreError):
        type(index).load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError):
        type(index).load(tmp_path / "empty")


def _biggest_file(folder: Path, skip: str = "meta.json") -> Path:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != skip]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "meta", "delete"])
def test_corrupted_folder_raises_store_error(index, tmp_path, damage):
    folder = tmp_path / "idx"
    index.save(folder)
    victim = _biggest_file(folder)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "garbage":
        victim.write_bytes(np.random.default_rng(1).bytes(victim.stat().st_size))
    elif damage == "meta":
        (folder / "meta.json").write_text('{"format": "recsi')
    else:
        victim.unlink()
    with pytest.raises((CorruptStoreError, StoreError)):
        type(index).load(folder)


def test_corrupt_faiss_blob_behind_valid_metadata(data, tmp_path):
    """Garbage that passes no checksum must still fail cleanly, never crash the process."""
    idx = FaissIndex(DIM, "hnsw")
    idx.upsert(data.ids, data.vectors)
    idx.save(tmp_path / "idx")
    blob = tmp_path / "idx" / "index.faiss"
    raw = bytearray(blob.read_bytes())
    raw[40:80] = b"\xff" * 40
    blob.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError):
        FaissIndex.load(tmp_path / "idx")
    shutil.rmtree(tmp_path / "idx")


def test_per_call_params_do_not_change_defaults(impl, index, data):
    def defaults(idx):
        return {k: v for k, v in vars(idx).items() if isinstance(v, (int, float, str, type(None)))}

    before = defaults(index)
    base = index.search(data.queries, 10)
    odd = index.search(data.queries, 10, params=SearchParams(ef_search=1, nprobe=1, refine_factor=1))
    check_shape(*odd, len(data.queries), 10)
    assert defaults(index) == before
    again = index.search(data.queries, 10)
    assert np.array_equal(base[1], again[1])


def test_faiss_per_call_nprobe_is_used(data):
    """nprobe=1 on a trained IVF really searches fewer lists (so the parameter reaches FAISS)."""
    idx = FaissIndex(DIM, "ivf", nlist=8, nprobe=8, train_min=100, exact_below=1)
    idx.upsert(data.ids, data.vectors)
    _, want = data.exact(data.queries, 20)
    _, full = idx.search(data.queries, 20)
    _, one = idx.search(data.queries, 20, params=SearchParams(nprobe=1))
    assert np.array_equal(full, want)
    assert recall(one, want) < 0.9
    assert idx.nprobe == 8


def test_faiss_hnsw_compaction_keeps_answers(data):
    idx = FaissIndex(DIM, "hnsw", compact_at=0.2, exact_below=1)
    idx.upsert(data.ids, data.vectors, data.meta)
    for round_ in range(3):  # each round replaces 80 items: the dead fraction passes 0.2
        chosen = data.ids[round_ * 80 : (round_ + 1) * 80]
        idx.upsert(chosen, data.vectors[(chosen - 1) // 3], [data.meta[(i - 1) // 3] for i in chosen])
    assert idx.positions < 2 * N  # compacted at least once
    assert len(idx) == N
    _, ids = idx.search(data.queries, 10)
    _, want = data.exact(data.queries, 10)
    assert recall(ids, want) >= 0.95
    assert idx.metadata(int(data.ids[8])) == {"category": "c", "in_stock": True, "price": 8.0}


def test_faiss_ivf_is_exact_until_trained(data):
    idx = FaissIndex(DIM, "ivf", train_min=250, exact_below=1)
    idx.upsert(data.ids[:200], data.vectors[:200])
    assert not idx.trained
    _, ids = idx.search(data.queries, 10)
    assert np.array_equal(ids, data.exact(data.queries, 10, removed=data.ids[200:].tolist())[1])
    idx.upsert(data.ids[200:], data.vectors[200:])
    assert idx.trained and len(idx) == N


def test_lance_rows_after_index_build_are_searchable_at_once(data):
    idx = LanceIndex(DIM, index_type="hnsw_sq", index_min_rows=256)
    idx.upsert(data.ids, data.vectors, data.meta)
    assert idx.indexed
    idx.upsert([10**6], data.queries[:1], [{"category": "fresh"}])
    _, ids = idx.search(data.queries[:1], 3)
    assert ids[0, 0] == 10**6
    _, ids = idx.search(data.queries[:1], 3, filter=parse_filter('category == "fresh"'))
    assert ids[0].tolist() == [10**6, -1, -1]
    idx.optimize()
    _, ids = idx.search(data.queries[:1], 3)
    assert ids[0, 0] == 10**6


def test_concurrent_searches_during_upserts(impl, index, data):
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                scores, ids = index.search(data.queries, 5, filter=parse_filter("price < 40"))
                check_shape(scores, ids, len(data.queries), 5)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(3)
    alive = set(data.ids.tolist())
    for step in range(5):
        ids = rng.choice(data.ids, 20, replace=False)
        index.upsert(ids, unit(rng, 20), [{"price": float(step)}] * 20)
        index.remove(ids[:2])
        alive = (alive | set(ids.tolist())) - set(ids[:2].tolist())
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == len(alive)
    assert all(i in index for i in alive)
