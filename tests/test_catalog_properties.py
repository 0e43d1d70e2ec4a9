"""Property tests: random upsert/remove sequences on ``Catalog`` agree with a plain dict model.

The model is written from the documented contract, not from the code: rows count up from 0
in order of first appearance and are never renumbered (a removed id that comes back gets its
old row); ``version`` bumps once per call that changes something; a change is any difference
in what the item holds, including a metadata value's type (``1`` -> ``True``) or the order of
attributes (which the rendered text follows); a bad batch changes nothing.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsieve.catalog import Catalog
from recsieve.errors import DuplicateIdError, UnknownItemError
from recsieve.types import Item

IDS = ["a", "b", "c", "d", "e", "f"]

metadata_values = st.one_of(
    st.sampled_from([0, 1]),
    st.sampled_from([0.0, 1.0, -0.0]),
    st.booleans(),
    st.sampled_from(["1", "true"]),
)
items = st.builds(
    Item,
    id=st.sampled_from(IDS),
    title=st.sampled_from(["Dune", "Ünïcode ✓"]),
    categories=st.sampled_from([(), ("books",)]),
    attributes=st.dictionaries(st.sampled_from(["brand", "author"]), st.just("Acme"), max_size=2),
    metadata=st.dictionaries(st.sampled_from(["price", "flag"]), metadata_values, max_size=2),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(items, max_size=4)),
        st.tuples(st.just("remove"), st.lists(st.sampled_from(IDS), max_size=4)),
    ),
    max_size=25,
)


def exact(item: Item) -> str:
    """Everything an item holds, types and key order included."""
    return json.dumps(item.to_dict())


@dataclass
class Model:
    rows: dict[str, int] = field(default_factory=dict)  # every id ever added -> its row
    live: dict[str, Item] = field(default_factory=dict)
    version: int = 0


def apply_upsert(model: Model, batch: list[Item]) -> list[int] | type[Exception]:
    if len({it.id for it in batch}) < len(batch):
        return DuplicateIdError
    changed = False
    out = []
    for it in batch:
        if it.id not in model.rows:
            model.rows[it.id] = len(model.rows)
        old = model.live.get(it.id)
        if old is None or exact(old) != exact(it):
            changed = True
            model.live[it.id] = it
        out.append(model.rows[it.id])
    model.version += changed
    return out


def apply_remove(model: Model, ids: list[str]) -> list[int] | type[Exception]:
    if any(i not in model.live for i in ids):
        return UnknownItemError
    unique = list(dict.fromkeys(ids))
    for i in unique:
        del model.live[i]
    model.version += bool(unique)
    return [model.rows[i] for i in unique]


def check_agrees(cat: Catalog, model: Model) -> None:
    assert cat.version == model.version
    assert len(cat) == len(model.live)
    assert cat.num_rows == len(model.rows)
    assert cat.live_rows().tolist() == sorted(model.rows[i] for i in model.live)
    for item_id, row in model.rows.items():
        if item_id in model.live:
            assert item_id in cat and cat.row(item_id) == row and cat.is_live(row)
            assert exact(cat.get(item_id)) == exact(model.live[item_id])
            assert cat.item_id(row) == item_id
            assert cat.text(row) == cat.render(model.live[item_id])
        else:
            assert item_id not in cat and not cat.is_live(row)
            assert cat.title(row) == item_id  # a tombstone still answers with its id
            with pytest.raises(UnknownItemError):
                cat.row(item_id)
    assert [exact(it) for it in cat] == [exact(model.live[i]) for i in sorted(model.live, key=model.rows.get)]


@settings(max_examples=150, deadline=None)
@given(ops)
def test_catalog_agrees_with_dict_model(sequence):
    cat, model = Catalog(), Model()
    for op, arg in sequence:
        before = cat.version
        expected = (apply_upsert if op == "upsert" else apply_remove)(model, arg)
        if isinstance(expected, type):
            with pytest.raises(expected):
                getattr(cat, op)(arg)
            assert cat.version == before
        else:
            assert getattr(cat, op)(arg).tolist() == expected
        check_agrees(cat, model)
    with tempfile.TemporaryDirectory() as tmp:
        cat.save(tmp)
        loaded = Catalog.load(tmp)
    check_agrees(loaded, model)
    # the loaded catalog goes on numbering where the saved one stopped
    assert loaded.upsert([Item("new", title="N")]).tolist() == [len(model.rows)]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"flag": 1}, {"flag": True}),  # equal under ==, but filters tell int from bool
        ({"price": 1}, {"price": 1.0}),
        ({"price": 0.0}, {"price": -0.0}),
    ],
)
def test_metadata_type_change_is_a_change(old, new):
    cat = Catalog()
    cat.upsert([Item("a", title="A", metadata=old)])
    cat.upsert([Item("a", title="A", metadata=new)])
    assert cat.version == 2
    assert exact(cat.get("a")) == exact(Item("a", title="A", metadata=new))
