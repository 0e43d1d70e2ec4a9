"""Exploration slots for items without behaviour (``EngineConfig.new_item_slots`` /
``new_item_position``): the best-ranked candidates with no positive event move up to fixed
answer positions; everything else keeps its order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_config import WordHashEmbedder

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.engine.pipeline import promote
from recsieve.errors import InvalidInputError


@given(st.lists(st.booleans(), max_size=30), st.integers(0, 4), st.integers(0, 12))
def test_promote_moves_the_first_fresh_entries_up_and_keeps_the_rest_in_order(fresh, slots, position):
    fresh = np.array(fresh, bool)
    perm = promote(fresh, slots, position)
    assert sorted(perm.tolist()) == list(range(len(fresh)))  # a permutation
    picked = np.flatnonzero(fresh)[:slots].tolist()
    for j, i in enumerate(picked):
        assert perm.tolist().index(i) == min(i, position + j)
    rest = [i for i in perm.tolist() if i not in picked]
    assert rest == sorted(rest)


@pytest.mark.parametrize("field", ["new_item_slots", "new_item_position"])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_slot_settings_must_be_non_negative_integers(field, bad):
    with pytest.raises(InvalidInputError, match=field):
        EngineConfig(**{field: bad})


def _engine(path, **slots) -> Engine:
    config = EngineConfig(index="flat", recall_n=30, cache="none", refresh_threads=0, **slots)
    eng = Engine.create(path, config, embedder=WordHashEmbedder(32))
    groups = ("alpha", "bravo", "charlie")
    eng.upsert_items([Item(f"{g}-{j}", title=f"{g} gadget {g} model {j}") for g in groups for j in range(8)])
    rng = np.random.default_rng(0)
    events = [Event(f"u{u}", f"{groups[u % 3]}-{j}", "click", ts=1e6 + 60.0 * (u * 10 + t))
              for u in range(60) for t, j in enumerate(rng.choice(8, size=5, replace=False))]
    eng.record(events)
    eng.upsert_items([Item(f"{g}-new", title=f"{g} gadget {g} model new") for g in groups])  # no events
    return eng


def test_an_engine_gives_its_best_new_items_the_slots_and_keeps_the_rest_in_order(tmp_path):
    plain, slotted = _engine(tmp_path / "plain"), _engine(tmp_path / "slots", new_item_slots=2, new_item_position=1)
    try:
        for user in ("u0", "u1", "u5"):
            base = [r.item_id for r in plain.recommend(user, 30)]
            got = [r.item_id for r in slotted.recommend(user, 30)]
            new = [i for i in base if i.endswith("-new")]
            assert new, "the new items are recalled (by their words)"
            assert sorted(got) == sorted(base)
            picked = new[:2]
            for j, item in enumerate(picked):
                assert got.index(item) == min(base.index(item), 1 + j)
            assert [i for i in got if i not in picked] == [i for i in base if i not in picked]
            # the recall-only order is not touched
            v_plain, v_slot = plain.users.get(user), slotted.users.get(user)
            np.testing.assert_array_equal(plain.rank(v_plain, rerank=False)[0], slotted.rank(v_slot, rerank=False)[0])
    finally:
        plain.close()
        slotted.close()
