"""Recall channels and reciprocal-rank fusion on hand-built cases."""

import numpy as np

from recsieve.engine.recall import PopularityChannel, RecallRequest, TransitionsChannel, fuse
from recsieve.types import Candidates


def cands(rows):
    return Candidates(np.asarray(rows, np.int64), np.linspace(1, 0, len(rows)).astype(np.float32))


def test_fuse_hand_computed():
    out = fuse([cands([1, 2, 3]), cands([3, 4])], [1.0, 2.0], n=10, k0=0.0)
    # 1: 1/1 ; 2: 1/2 ; 3: 1/3 + 2/1 ; 4: 2/2
    assert out.rows.tolist() == [3, 1, 4, 2]
    assert np.allclose(out.scores, [1 / 3 + 2, 1, 1, 0.5])
    assert fuse([cands([1, 2, 3])], [1.0], n=2).rows.tolist() == [1, 2]
    assert len(fuse([cands([])], [1.0], n=5)) == 0


def test_transitions_follow_recent_items():
    ch = TransitionsChannel(depth=2, decay=0.5)
    for prev, nxt in [(0, 1), (0, 1), (0, 2), (5, 3), (1, 4)]:
        ch.observe(prev, nxt, positive=True)
    ch.observe(0, 9, positive=False)  # negative events teach nothing
    got = ch.recall(RecallRequest(n=10, recent_rows=(5, 0)))
    # most recent is 0: P(1|0)=2/3, P(2|0)=1/3 ; then 5 (decay 0.5): P(3|5)=1
    assert got.rows.tolist() == [1, 3, 2]
    assert np.allclose(got.scores, [2 / 3, 0.5, 1 / 3])
    excluded = ch.recall(RecallRequest(n=10, recent_rows=(5, 0), exclude=frozenset({1}), accept=lambda r: r != 2))
    assert excluded.rows.tolist() == [3]


def test_popularity_cold_start_and_ties():
    ch = PopularityChannel(lambda: 6)
    for r in [4, 4, 2, 5, 5, 5]:
        ch.observe(None, r, positive=True)
    got = ch.recall(RecallRequest(n=4))
    assert got.rows.tolist() == [5, 4, 2, 0]  # zero-count items follow, by row
    empty = PopularityChannel(lambda: 3).recall(RecallRequest(n=5))
    assert empty.rows.tolist() == [0, 1, 2]
    assert ch.recall(RecallRequest(n=2, accept=lambda r: r % 2 == 0)).rows.tolist() == [4, 2]


def test_popularity_head_path_matches_full_sort():
    n = 5000
    ch = PopularityChannel(lambda: n)
    rng = np.random.default_rng(1)
    for r in rng.integers(0, n, size=3000):
        ch.observe(None, int(r), positive=True)
    got = ch.recall(RecallRequest(n=50, accept=lambda r: r % 3 != 0))
    full = sorted((r for r in range(n) if r % 3 != 0), key=lambda r: (-ch.count(r), r))[:50]
    assert got.rows.tolist() == full


def _stream(seed: int) -> list[tuple[int | None, int, bool]]:
    rng = np.random.default_rng(seed)
    out, prev = [], None
    for _ in range(300):
        row, positive = int(rng.integers(0, 40)), bool(rng.random() < 0.8)
        out.append((prev, row, positive))
        if positive:
            prev = row
    return out


def _state(ch) -> tuple:
    request = RecallRequest(n=40, recent_rows=(3, 7, 11))
    got = ch.recall(request)
    feats = ch.features(request, np.arange(40))
    return got.rows.tolist(), np.round(got.scores, 6).tolist(), feats.tolist()


def test_forget_undoes_observe_and_copies_are_independent():
    kept, dropped = _stream(0), _stream(1)
    for make in (lambda: TransitionsChannel(depth=3), lambda: PopularityChannel(lambda: 40)):
        alone = make()
        for ev in kept:
            alone.observe(*ev)
        both = make()
        for ev in kept + dropped:
            both.observe(*ev)
        before = _state(both)
        twin = both.copy()
        for ev in dropped:
            twin.forget(*ev)
        assert _state(twin) == _state(alone)  # the copy without the dropped events = never seen them
        assert _state(both) == before  # the original is untouched
        for ev in dropped:
            twin.observe(*ev)
        assert _state(twin) == before
        twin.forget(None, 100, True)  # forgetting what was never seen changes nothing
        twin.forget(100, 101, True)
        assert _state(twin) == before
