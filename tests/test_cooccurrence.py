"""Item co-occurrence (:mod:`recsieve.context.cooccurrence`): the counts and scores against a
plain re-count, pruning, persistence inside a context model folder, bad input. Toy sizes."""

from __future__ import annotations

import numpy as np
import pytest

from recsieve.context.cooccurrence import COOCCURRENCE_FILE, CoOccurrence
from recsieve.context.model import ContextModel, ContextSettings
from recsieve.errors import CorruptStoreError, InvalidInputError


def _sequences(seed: int = 0, n_items: int = 40, users: int = 150) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, int(rng.integers(1, 25))) for _ in range(users)]


def _dense(sequences, n_items: int, gap: int) -> np.ndarray:
    """Cosine-normalised counts of pairs at most ``gap`` apart, counted pair by pair."""
    c = np.zeros((n_items, n_items))
    for s in sequences:
        for i in range(len(s)):
            for j in range(i + 1, min(len(s), i + gap + 1)):
                if s[i] != s[j]:
                    c[s[i], s[j]] += 1
                    c[s[j], s[i]] += 1
    d = c.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(c > 0, c / np.sqrt(np.outer(d, d)), 0.0)
    return sim


def _score(sim: np.ndarray, recent, depth: int, decay: float) -> np.ndarray:
    w = np.zeros(sim.shape[0])
    for age, a in enumerate(list(recent)[::-1][:depth]):
        w[a] += decay**age
    return w @ sim


@pytest.mark.parametrize("gap", [1, 3])
def test_scores_match_a_pair_by_pair_count(gap) -> None:
    seqs, n = _sequences(), 40
    counts = CoOccurrence.fit(seqs, n, gap=gap, neighbours=n, depth=7, decay=0.8)
    sim = _dense(seqs, n, gap)
    for s in seqs[:20]:
        np.testing.assert_allclose(counts.scores(s, np.arange(n)), _score(sim, s, 7, 0.8), rtol=1e-5, atol=1e-6)
    # a wider gap counts more pairs: the scores change
    other = CoOccurrence.fit(seqs, n, gap=gap + 2, neighbours=n, depth=7, decay=0.8)
    assert not np.allclose(other.scores(seqs[0], np.arange(n)), counts.scores(seqs[0], np.arange(n)))


@pytest.mark.parametrize("dense_sums", [None, 1000, 100])
def test_many_requests_at_once_give_each_request_its_own_scores_exactly(dense_sums, monkeypatch) -> None:
    """scores_many (the batched ranking examples) against one request at a time, to the bit:
    requests share candidate rows (a key collision across requests would leak one request's sums
    into another), list a candidate twice, have rows past the counts, or no history at all; in
    one pass, 22 requests a pass, and (a catalog too large for dense sums) request by request."""
    if dense_sums is not None:
        monkeypatch.setattr("recsieve.context.cooccurrence._DENSE_SUMS", dense_sums)
    seqs, n = _sequences(2), 40
    counts = CoOccurrence.fit(seqs, n, gap=3, neighbours=12, depth=9, decay=0.85)
    rng = np.random.default_rng(5)
    recents = [seqs[i] for i in range(30)] + [np.zeros(0, np.int64), np.array([n + 3, 1])]
    cands = [rng.integers(0, n + 4, int(rng.integers(0, 30))) for _ in recents]
    cands[3] = np.concatenate([cands[3], cands[3][:2]]) if cands[3].size else np.array([1, 1])
    offsets = np.concatenate([[0], np.cumsum([c.size for c in cands])])
    got = counts.scores_many(recents, np.concatenate(cands), offsets)
    for g, (r, c) in enumerate(zip(recents, cands)):
        np.testing.assert_array_equal(got[offsets[g]:offsets[g + 1]], counts.scores(r, c))
    assert got.any() and (got[offsets[3]:offsets[4]][-2:] == got[offsets[3]:offsets[3] + 2]).all()
    for bad in (offsets[:-1], offsets[::-1], np.concatenate([[1], offsets[1:]])):
        with pytest.raises(InvalidInputError, match="offsets"):
            counts.scores_many(recents, np.concatenate(cands), bad)


def test_each_item_keeps_its_top_neighbours() -> None:
    seqs, n = _sequences(1), 40
    sim = _dense(seqs, n, 2)
    counts = CoOccurrence.fit(seqs, n, gap=2, neighbours=5)
    assert np.diff(counts.indptr).max() == 5
    for i in range(n):
        kept = counts.data[counts.indptr[i]:counts.indptr[i + 1]]
        top = np.sort(sim[i][sim[i] > 0])[::-1][:5]
        np.testing.assert_allclose(np.sort(kept)[::-1], top, rtol=1e-5)


def test_unknown_rows_and_empty_contexts_score_zero() -> None:
    counts = CoOccurrence.fit([np.array([0, 1, 2]), np.array([1, 2])], 3)
    assert counts.scores(np.array([1]), np.array([0, 2, 5, 9])).tolist()[2:] == [0.0, 0.0]  # rows added since
    assert counts.scores(np.array([7]), np.array([0, 1])).tolist() == [0.0, 0.0]  # a context row added since
    assert counts.scores(np.zeros(0, np.int64), np.array([0, 1])).tolist() == [0.0, 0.0]
    assert counts.scores(np.array([1]), np.array([2]))[0] > 0


def test_without_forgets_the_rows() -> None:
    seqs, n = _sequences(2), 40
    counts = CoOccurrence.fit(seqs, n)
    cold = np.array([3, 7])
    twin = counts.without(cold)
    everything = np.arange(n)
    assert twin.scores(seqs[0], cold).tolist() == [0.0, 0.0]
    assert not twin.scores(np.array([3, 7]), everything).any()
    assert counts.scores(seqs[0], everything).any()  # the original is unchanged
    warm = np.setdiff1d(everything, cold)
    history = seqs[0][~np.isin(seqs[0], cold)]
    np.testing.assert_array_equal(twin.scores(history, warm), counts.scores(history, warm))


def test_bad_input_names_the_field() -> None:
    with pytest.raises(InvalidInputError, match="gap"):
        CoOccurrence.fit([np.array([0, 1])], 2, gap=0)
    with pytest.raises(InvalidInputError, match="sequences"):
        CoOccurrence.fit([np.array([0, 5])], 3)
    with pytest.raises(InvalidInputError, match="decay"):
        CoOccurrence.fit([np.array([0, 1])], 2, decay=0.0)


def test_saved_with_the_context_model_and_checked(tmp_path) -> None:
    n = 40
    model = ContextModel(ContextSettings(n_warm=n, text_dim=0, dim=8, max_len=4))
    model.set_items(None)
    seqs = _sequences(3)
    model.cooccurrence = CoOccurrence.fit(seqs, n, gap=2)
    model.save(tmp_path / "m")
    back = ContextModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.cooccurrence.scores(seqs[0], np.arange(n)),
                                  model.cooccurrence.scores(seqs[0], np.arange(n)))
    assert back.cooccurrence.gap == 2
    # a flipped byte: the manifest's checksum refuses the folder
    path = tmp_path / "m" / COOCCURRENCE_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match="checksum"):
        ContextModel.load(tmp_path / "m")
    # a model saved without counts loads without them
    model.cooccurrence = None
    model.save(tmp_path / "plain")
    assert ContextModel.load(tmp_path / "plain").cooccurrence is None


def test_inconsistent_arrays_are_refused(tmp_path) -> None:
    counts = CoOccurrence.fit(_sequences(4), 40)
    counts.indices = counts.indices.copy()
    counts.indices[0] = 99  # past the catalog
    counts.save(tmp_path / "c.npz")
    with pytest.raises(CorruptStoreError, match="inconsistent"):
        CoOccurrence.load(tmp_path / "c.npz")
    (tmp_path / "t.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptStoreError, match="cannot read"):
        CoOccurrence.load(tmp_path / "t.npz")
