"""The SQLite journal and the user store: durability, replay order, incremental profiles."""

import math
import sqlite3

import numpy as np
import pytest
from test_journal_redis import journal_url, open_journal, redis_base, redis_journal_url  # noqa: F401 (fixtures)

from recsieve.engine.journal import EventRecord, ItemOp, Journal
from recsieve.engine.users import UserStore
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
