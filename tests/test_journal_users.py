"""The SQLite journal and the user store: durability, replay order, incremental profiles."""

import math
import sqlite3

import numpy as np
import pytest
from test_journal_redis import journal_url, open_journal, redis_base, redis_journal_url  # noqa: F401 (fixtures)

from recsieve.engine.journal import EventColumns, EventRecord, ItemOp, Journal
from recsieve.engine.users import UserStore, _group_sums
from recsieve.errors import CorruptStoreError, StoreError

DIM = 4


def test_journal_replays_in_order_across_reopen(open_journal):  # noqa: F811 (the imported fixture)
    j = open_journal(DIM)
    vecs = np.eye(DIM, dtype=np.float32)[:2]
    s1 = j.append_item_op("upsert", [{"id": "a"}, {"id": "b"}], vecs)
    s2 = j.append_events([("u", "a", 0, "click", 10.0, None, None), ("u", "b", 1, "view", 11.0, 2.0, "hi")])
    s3 = j.append_item_op("remove", ["a"])
    assert (s1, s2, s3) == (1, 3, 4)
    j.close()
    j = open_journal(DIM)
    entries = list(j.replay(0))
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert isinstance(entries[0], ItemOp) and np.array_equal(entries[0].vectors, vecs)
    assert entries[2] == EventRecord(3, "u", "b", 1, "view", 11.0, 2.0, "hi")
    assert [e.seq for e in j.replay(2)] == [3, 4]


@pytest.mark.parametrize("page", [2, 1 << 20])
def test_tail_columns_hold_the_tail(open_journal, monkeypatch, page):  # noqa: F811 (the imported fixture)
    """``tail_columns``: the same entries as ``tail`` in the same order, each run of events as
    columns that stop at every item operation (and at a SQLite page's end)."""
    monkeypatch.setattr("recsieve.engine.journal._COLUMN_PAGE", page)
    j = open_journal(DIM)
    j.append_item_op("upsert", [{"id": "a"}, {"id": "b"}], np.eye(DIM, dtype=np.float32)[:2])
    j.append_events([("u", "a", 0, "click", 10.0, None, None), ("v", "b", 1, "view", 11.0, 2.0, "hi"),
                     ("u", "b", 1, "cart", 12.0, None, "é")])
    j.append_item_op("remove", ["a"])
    j.append_item_op("remove", ["b"])
    j.append_events([("w", "b", 1, "rating", 13.0, 4.0, None)])
    for after in (0, 2, 5):
        flat = []
        for got in j.tail_columns(after):
            if isinstance(got, ItemOp):
                flat.append(got)
                continue
            assert len(got) > 0 and np.all(np.diff(got.seq) == 1)
            flat += [EventRecord(int(q), u, "", r, k, t, None if np.isnan(w) else w, x) for q, u, r, k, w, t, x in
                     zip(got.seq, got.users, got.rows.tolist(), got.kinds, got.weights.tolist(), got.ts.tolist(),
                         got.texts, strict=True)]
        want = [e if isinstance(e, ItemOp) else EventRecord(e.seq, e.user_id, "", e.row, e.kind, e.ts, e.weight, e.text)
                for e in j.tail(after)]
        assert [e.seq for e in flat] == list(range(after + 1, 8))
        assert [(e.seq, e.op) if isinstance(e, ItemOp) else e for e in flat] == \
            [(e.seq, e.op) if isinstance(e, ItemOp) else e for e in want]


@pytest.mark.parametrize("page", [1, 2, 100])
def test_columns_of_tail_groups_runs_of_records(page):
    """A record-reading journal's ``tail_columns``: runs of events, at most ``page`` each, cut at
    every item operation, in order, nothing lost."""
    from recsieve.engine.journal import columns_of_tail

    op = ItemOp(4, "remove", ["a"], None)
    records = [EventRecord(s, f"u{s}", "a", s, "click", float(s), None if s % 2 else 2.0, None) for s in (1, 2, 3)]
    records += [op] + [EventRecord(s, "v", "a", 0, "view", float(s), None, "t") for s in (5, 6, 7)]
    got = list(columns_of_tail(iter(records), page=page))
    assert all(isinstance(g, ItemOp) or 0 < len(g) <= page for g in got)
    assert got[[isinstance(g, ItemOp) for g in got].index(True)] is op
    flat = [s for g in got if not isinstance(g, ItemOp) for s in g.seq.tolist()]
    assert flat == [1, 2, 3, 5, 6, 7]
    runs = [g for g in got if not isinstance(g, ItemOp)]
    assert sum(np.isnan(g.weights).sum() for g in runs) == 5 and [t for g in runs for t in g.texts][-1] == "t"


def test_sequence_never_goes_back_after_truncation(open_journal):  # noqa: F811 (the imported fixture)
    j = open_journal(DIM)
    j.append_item_op("upsert", [{"id": "a"}], np.ones((1, DIM), np.float32))
    j.append_item_op("remove", ["a"])
    j.truncate_item_ops(2)
    j.close()
    j = open_journal(DIM)
    assert j.last_seq == 2
    assert j.append_item_op("remove", ["b"]) == 3


def test_journal_uses_wal_and_rejects_garbage(tmp_path):
    j = Journal(tmp_path / "j.sqlite", DIM)
    mode = sqlite3.connect(tmp_path / "j.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    j.close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptStoreError):
        Journal(bad, DIM)
    with pytest.raises(StoreError):
        Journal(tmp_path, DIM)


def test_profile_is_decayed_weighted_mean():
    store = UserStore(2, half_life_days=1.0)
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    store.apply("u", 0, a, "click", 0.0, None, None)
    store.apply("u", 1, b, "purchase", 86400.0, None, None)  # one half-life later
    view = store.get("u")
    # S = 0.5 * 1 * a + 3 * b ; W = 0.5 * 1 + 3
    expected = (0.5 * a + 3 * b) / 3.5
    assert np.allclose(view.profile, expected, atol=1e-6)
    assert view.version == 2 and view.consumed == {0, 1}
    assert [e.row for e in view.recent] == [0, 1]


def test_out_of_order_event_is_decayed_itself():
    store = UserStore(2, half_life_days=1.0)
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    store.apply("u", 0, a, "click", 86400.0, None, None)
    store.apply("u", 1, b, "click", 0.0, None, None)  # older by one half-life
    assert np.allclose(store.get("u").profile, (a + 0.5 * b) / 1.5, atol=1e-6)
    assert store.get("u").last_ts == 86400.0


def test_negative_events_and_ratings():
    store = UserStore(2)
    assert store.event_weight("dislike", None) < 0
    assert store.event_weight("rating", 5) == 1.0 and store.event_weight("rating", 1) == -1.0
    a = np.array([1.0, 0.0], np.float32)
    store.apply("u", 0, a, "click", 0.0, None, None)
    store.apply("u", 0, a, "dislike", 0.0, None, None)  # cancels exactly
    assert store.get("u").profile is None
    assert store.get("nobody") is None and store.version("nobody") == 0


def test_user_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    store = UserStore(DIM, recent_window=3)
    for t in range(7):
        store.apply(f"u{t % 2}", t, rng.normal(size=DIM).astype(np.float32), "click", float(t), None, f"t{t}")
    store.save(tmp_path)
    again = UserStore(DIM, recent_window=3)
    again.load(tmp_path)
    for u in ("u0", "u1"):
        v1, v2 = store.get(u), again.get(u)
        assert np.array_equal(v1.profile, v2.profile)
        assert v1.recent == v2.recent and v1.consumed == v2.consumed and v1.version == v2.version
    assert len(store.get("u0").recent) == 3
    (tmp_path / "users.npz").write_text("{broken\n" * 2)
    with pytest.raises(CorruptStoreError):
        UserStore(DIM).load(tmp_path)
    (tmp_path / "users.npz").unlink()
    store.save(tmp_path, format="jsonl")  # the format before columns still loads
    again = UserStore(DIM, recent_window=3)
    again.load(tmp_path)
    assert again.get("u0").recent == store.get("u0").recent and again.get("u1").version == store.get("u1").version
    (tmp_path / "users.jsonl").write_text("{broken\n" * 2)
    with pytest.raises(CorruptStoreError):
        UserStore(DIM).load(tmp_path)
    assert not math.isnan(store.get("u0").last_ts)


def test_loaded_users_read_their_windows_on_first_touch(tmp_path):
    """A loaded store builds a user's window and consumed rows from the snapshot's columns when
    first touched: users touched after the load (by new events) and users never touched save
    and read back as a store that never left memory; a snapshot whose offsets do not match its
    users is refused at load, not at first touch."""
    dim, rows = 6, 30
    vectors = np.random.default_rng(4).standard_normal((rows, dim)).astype(np.float32)
    events = _event_log(5, 900, 25, rows)
    memory, loaded = (UserStore(dim, recent_window=4, history_window=9) for _ in range(2))
    for e in events[:600]:
        for store in (memory, loaded):
            store.apply(e.user_id, e.row, vectors[e.row], e.kind, e.ts, e.weight, e.text and e.text + " é")
    loaded.save(tmp_path)
    loaded = UserStore(dim, recent_window=4, history_window=9)
    loaded.load(tmp_path)
    for e in events[600:]:
        if e.user_id in ("u1", "u2", "u3"):  # some users get events after the load, the rest are never touched
            for store in (memory, loaded):
                store.apply(e.user_id, e.row, vectors[e.row], e.kind, e.ts, e.weight, e.text)
    (tmp_path / "again").mkdir()
    loaded.save(tmp_path / "again")
    again = UserStore(dim, recent_window=4, history_window=9)
    again.load(tmp_path / "again")
    for uid in memory._users:
        a, b = memory.get(uid), again.get(uid)
        assert (a.version, a.history, a.recent, a.consumed, a.last_ts) == (b.version, b.history, b.recent,
                                                                            b.consumed, b.last_ts)
        np.testing.assert_allclose(a.profile, b.profile, rtol=1e-6)
    with np.load(tmp_path / "users.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["recent_offsets"] = arrays["recent_offsets"][:-1]
    np.savez(tmp_path / "users.npz", **arrays)
    with pytest.raises(CorruptStoreError, match="users.npz"):
        UserStore(dim, recent_window=4, history_window=9).load(tmp_path)


def _event_log(seed: int, n: int, users: int, rows: int) -> list[EventRecord]:
    """Events of many users, a fifth of them out of time order, every kind, weights given or not."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n):
        late = rng.random() < 0.2
        ts = 1e6 + (rng.uniform(-5e6, 5e6) if late else s * 1000.0)
        kind = ("view", "click", "cart", "purchase", "rating", "dislike")[int(rng.integers(0, 6))]
        weight = (None, 4.0, 1.5)[int(rng.integers(0, 3))]
        out.append(EventRecord(s + 1, f"u{int(rng.integers(0, users))}", "x", int(rng.integers(0, rows)), kind,
                               float(ts), weight, None if rng.random() < 0.5 else "a note"))
    return out


@pytest.mark.parametrize("run", [1, 7, 500])
def test_apply_columns_reaches_the_state_of_one_event_at_a_time(run):
    """The bulk replay at open (``apply_columns``) against the live rule (``apply``), from a state
    that already holds events: the same profile (to float32 rounding: ``apply`` adds float32
    products), weight, newest time, recent window, consumed rows and version for every user."""
    dim, rows = 8, 60
    vectors = np.random.default_rng(1).standard_normal((rows, dim)).astype(np.float32)
    events = _event_log(2, 3000, 40, rows)
    one, bulk = (UserStore(dim, recent_window=5, history_window=12) for _ in range(2))
    for store, part in ((one, events), (bulk, events[:800])):
        for e in part:
            store.apply(e.user_id, e.row, vectors[e.row], e.kind, e.ts, e.weight, e.text)
    for lo in range(800, len(events), run):
        part = events[lo:lo + run]
        cols = EventColumns.of(part)
        bulk.apply_columns(cols.users, cols.rows, cols.kinds, cols.ts, bulk.event_weights(cols.kinds, cols.weights),
                           cols.texts, vectors)
    assert len(one) == len(bulk) == 40
    for uid in one._users:
        a, b = one.get(uid), bulk.get(uid)
        assert (a.last_ts, a.version, a.history, a.recent, a.consumed) == (b.last_ts, b.version, b.history, b.recent,
                                                                            b.consumed)
        assert one._users[uid].weight == pytest.approx(bulk._users[uid].weight, rel=1e-12)
        np.testing.assert_allclose(one._users[uid].profile, bulk._users[uid].profile, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_group_sums_across_chunks(chunk):
    """Each group's weighted sum of gathered vectors, whether a group spans chunk borders or not."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((9, 4)).astype(np.float32)
    counts = np.array([3, 1, 7, 2])
    rows, coef = rng.integers(0, 9, counts.sum()), rng.standard_normal(counts.sum())
    want = [sum(coef[j] * table[rows[j]].astype(np.float64) for j in range(lo, lo + c))
            for lo, c in zip(np.r_[0, np.cumsum(counts)[:-1]], counts)]
    np.testing.assert_allclose(_group_sums(coef, table, rows, counts, chunk=chunk), want, rtol=1e-12)

