"""Item files, validation, rendering, and the catalog's rows, versions and persistence."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsieve.catalog import (
    DEFAULT_TEMPLATE,
    MAX_TEXT_CHARS,
    Catalog,
    Template,
    check_item,
    content_hash,
    read_items,
    render,
    scan_items,
)
from recsieve.errors import (
    CorruptStoreError,
    DuplicateIdError,
    IncompatibleVersionError,
    InvalidInputError,
    UnknownItemError,
)
from recsieve.types import Item

GOOD = {"id": "a", "title": "Dune"}


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", "utf-8")
    return path


def items3():
    return [
        Item("a", title="Dune", categories=("books",), metadata={"price": 9.5}),
        Item("b", title="Heat", description="A heist film.", metadata={"year": 1995}),
        Item("c", description="Red running shoes.", attributes={"brand": "Acme"}),
    ]


# -- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "template", "expected"),
    [
        (
            Item("a", title="Dune", description="Desert epic.", categories=("books", "sci-fi"),
                 attributes={"author": "Frank Herbert"}),
            DEFAULT_TEMPLATE,
            "Dune. books, sci-fi. Desert epic. author: Frank Herbert",
        ),
        (Item("a", title="Dune", description="Desert epic."), DEFAULT_TEMPLATE, "Dune. Desert epic."),
        (Item("a", description="Desert epic."), DEFAULT_TEMPLATE, "Desert epic."),
        (Item("a", categories=("x",), attributes={"k": "v"}), DEFAULT_TEMPLATE, "x. k: v"),
        (Item("a", title="  Big   Sur \n", description="A\tcoast"), DEFAULT_TEMPLATE, "Big Sur. A coast"),
        (Item("a", title="Why Not?", description="A film"), DEFAULT_TEMPLATE, "Why Not? A film"),
        (Item("a", title="T", attributes={"k": " ", "j": "w"}), DEFAULT_TEMPLATE, "T. j: w"),
        (
            Item("a", title="Dune", description="Epic"),
            "Title: {title}. Tags: {categories}. About: {description}",
            "Title: Dune. About: Epic",
        ),
        (
            Item("a", categories=("c",), description="d"),
            "Title: {title}. Tags: {categories}. About: {description}",
            "Tags: c. About: d",
        ),
        (Item("a", title="Heat", metadata={"year": 1995}), "{title} ({year})", "Heat (1995)"),
        (Item("a", title="Anvil", attributes={"brand": "Acme"}), "{brand} {title}", "Acme Anvil"),
        (Item("a", title="Anvil"), "{brand} {title}", "Anvil"),
        (Item("a", title="Dune"), "{{literal}} {title}", "{literal} Dune"),
        (Item("x-1", title="Dune"), "{id}: {title}", "x-1: Dune"),
        (Item("a", title="Dune", metadata={"in_stock": True, "price": 2.5}), "{title} {in_stock} {price}",
         "Dune True 2.5"),
    ],
)
def test_render(item, template, expected):
    assert render(item, template) == expected
    assert Template(template).render(item) == expected


@pytest.mark.parametrize(
    "template",
    ["{x.__class__}", "{title.__class__.__init__}", "{x[0]}", "{}", "{0}", "{title!r}", "{title:>10}",
     "{title:{x}}", "{title", "no fields at all", "{a b}"],
)
def test_template_injection_rejected(template):
    with pytest.raises(InvalidInputError) as info:
        Template(template)
    assert info.value.field == "template"
    with pytest.raises(InvalidInputError):
        Catalog(template)


def test_template_must_be_a_string():
    with pytest.raises(InvalidInputError, match="must be a string"):
        Template(3)  # type: ignore[arg-type]


def test_content_hash_is_sha256():
    # Known SHA-256 test vectors (FIPS 180-2).
    assert content_hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash("é") != content_hash("e")


# -- reading files --------------------------------------------------------------------------


def test_jsonl_nested_and_flat_records(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [
        {"id": "a", "title": "Dune", "description": "Epic.", "categories": ["books", "sci-fi"],
         "attributes": {"author": "Frank Herbert"}, "metadata": {"price": 9.5, "year": 1965}},
        "",
        {"id": "b", "title": "Heat", "price": 12, "in_stock": False, "category": "films",
         "attributes.director": "Mann", "metadata.rating": 8.3, "note": None},
    ])
    assert read_items(path) == [
        Item("a", "Dune", "Epic.", ("books", "sci-fi"), {"author": "Frank Herbert"}, {"price": 9.5, "year": 1965}),
        Item("b", "Heat", "", (), {"director": "Mann"},
             {"price": 12, "in_stock": False, "category": "films", "rating": 8.3}),
    ]


def test_csv_types_inferred_per_column(tmp_path):
    path = tmp_path / "items.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "description", "categories", "price", "year", "in_stock", "sku",
                    "attributes.brand", "code"])
        w.writerow(["a", "Dune", "Desert, spice\nand worms", "books|sci-fi", "9.5", "1965", "true", "007",
                    "Ace", "x1"])
        w.writerow(["b", " Heat ", "", "films", "10", "", "FALSE", "12", "", "7"])
    assert read_items(path) == [
        Item("a", "Dune", "Desert, spice\nand worms", ("books", "sci-fi"), {"brand": "Ace"},
             {"price": 9.5, "year": 1965, "in_stock": True, "sku": "007", "code": "x1"}),
        Item("b", "Heat", "", ("films",), {}, {"price": 10.0, "in_stock": False, "sku": "12", "code": "7"}),
    ]
    types = [type(v) for v in read_items(path)[1].metadata.values()]
    assert types == [float, bool, str, str]


def test_parquet(tmp_path):
    table = pa.table({
        "id": ["a", "b"],
        "title": ["Dune", None],
        "description": [None, "Red shoes."],
        "categories": [["books"], None],
        "attributes": pa.array([[("author", "Herbert")], None], type=pa.map_(pa.string(), pa.string())),
        "metadata": [{"year": 1965}, {"year": None}],
        "price": [9.5, None],
        "in_stock": [True, False],
    })
    path = tmp_path / "items.parquet"
    pq.write_table(table, path)
    assert read_items(path) == [
        Item("a", "Dune", "", ("books",), {"author": "Herbert"}, {"year": 1965, "price": 9.5, "in_stock": True}),
        Item("b", "", "Red shoes.", (), {}, {"in_stock": False}),
    ]


def test_all_formats_round_trip(tmp_path):
    items = items3()
    jsonl = write_jsonl(tmp_path / "i.jsonl", [it.to_dict() for it in items])
    pq.write_table(pa.Table.from_pylist([
        {"id": it.id, "title": it.title, "description": it.description, "categories": list(it.categories),
         "brand": it.attributes.get("brand"), "price": it.metadata.get("price"), "year": it.metadata.get("year")}
        for it in items
    ]), tmp_path / "i.parquet")
    with open(tmp_path / "i.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "description", "categories", "attributes.brand", "price", "year"])
        for it in items:
            w.writerow([it.id, it.title, it.description, "|".join(it.categories), it.attributes.get("brand", ""),
                        it.metadata.get("price", ""), it.metadata.get("year", "")])
    assert read_items(jsonl) == items
    assert read_items(tmp_path / "i.csv") == items
    from_parquet = read_items(tmp_path / "i.parquet")
    # A flat Parquet column becomes metadata (an attribute needs an attributes map or an attributes.x column).
    assert [it.id for it in from_parquet] == ["a", "b", "c"]
    assert from_parquet[2].metadata == {"brand": "Acme"} and from_parquet[0].metadata == {"price": 9.5}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"title": "x"}, "id"),
        ({"id": None, "title": "x"}, "id"),
        ({"id": 5, "title": "x"}, "id"),
        ({"id": " b", "title": "x"}, "id"),
        ({"id": "", "title": "x"}, "id"),
        ({"id": "b" * 513, "title": "x"}, "id"),
        ({"id": "b", "title": "  ", "description": "\n"}, "text"),
        ({"id": "b"}, "text"),
        ({"id": "b", "title": 5}, "title"),
        ({"id": "b", "title": "x", "description": ["y"]}, "description"),
        ({"id": "b", "title": "x", "categories": "a|b"}, "categories"),
        ({"id": "b", "title": "x", "categories": [1]}, "categories[0]"),
        ({"id": "b", "title": "x", "categories": ["ok", " "]}, "categories[1]"),
        ({"id": "b", "title": "x", "attributes": {"pages": 3}}, "attributes.pages"),
        ({"id": "b", "title": "x", "attributes": "brand=Acme"}, "attributes"),
        ({"id": "b", "title": "x", "attributes": {"title": "y"}}, "attributes"),
        ({"id": "b", "title": "x", "metadata": 5}, "metadata"),
        ({"id": "b", "title": "x", "metadata": {"tags": ["a"]}}, "metadata.tags"),
        ({"id": "b", "title": "x", "tags": ["a"]}, "tags"),
        ({"id": "b", "title": "x", "dims": {"w": 1}}, "dims"),
        ({"id": "b", "title": "x", "n": 2**64}, "metadata.n"),
        ({"id": "b", "title": "x", "unit price": 3}, "metadata"),
        ({"id": "b", "title": "x", "class": 3}, "metadata"),
        ({"id": "b", "title": "x", "true": 3}, "metadata"),
        ({"id": "b", "title": "x", "metadata": {"title": "y"}}, "metadata"),
        ({"id": "b", "title": "x", "attributes": {"brand": "A"}, "metadata": {"brand": "A"}}, "metadata.brand"),
        ({"id": "b", "title": "x", "price": 1, "metadata": {"price": 2}}, "price"),
        ({"id": "b", "title": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
        ({"id": "b", "title": "x", "attributes": {"long": "y" * MAX_TEXT_CHARS}}, "text"),
        ('{"id": "b", "title": "x", "price": NaN}', "metadata.price"),
        ('{"id": "b", "title": "x", "price": -Infinity}', "metadata.price"),
        ('{"id": "b", "title": "x", "price": 1e999}', "metadata.price"),
    ],
)
def test_jsonl_validation_names_line_and_field(tmp_path, line, field):
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD, line])
    with pytest.raises(InvalidInputError) as info:
        read_items(path)
    assert info.value.field == f"items.jsonl line 2: {field}"
    assert str(info.value).startswith(f"items.jsonl line 2: {field}=")


@pytest.mark.parametrize("line", ['{"id": "b", "title": ', "[1, 2]", '"just a string"', "{'id': 'b'}"])
def test_jsonl_malformed_line(tmp_path, line):
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD, "", line])
    with pytest.raises(InvalidInputError) as info:
        read_items(path)
    assert info.value.field == "items.jsonl line 3"  # blank line 2 still counts


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD, {"id": "b", "title": "x"}, {"id": "a", "title": "again"}])
    with pytest.raises(DuplicateIdError) as info:
        read_items(path)
    assert info.value.field == "items.jsonl line 3: id" and "line 1" in str(info.value)


def test_non_utf8_line(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "b", "title": "caf\xe9"}\n')
    with pytest.raises(InvalidInputError, match="UTF-8") as info:
        read_items(path)
    assert info.value.field == "items.jsonl line 2"


def test_utf8_bom_and_crlf_accepted(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + b'{"id": "b", "title": "caf\xc3\xa9"}\r\n')
    assert read_items(path) == [Item("a", "Dune"), Item("b", "café")]


def test_skip_invalid_keeps_first_duplicate_and_counts(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(GOOD).encode(),
        b'{"id": 7, "title": "int id"}',
        b'{"id": "a", "title": "duplicate"}',
        b"not json",
        b'{"id": "c", "title": "caf\xe9"}',
        json.dumps({"id": "d", "description": "kept"}).encode(),
    ]))
    result = scan_items(path, skip_invalid=True)
    assert result.items == [Item("a", "Dune"), Item("d", description="kept")]
    assert result.skipped == 4
    assert [e.field for e in result.errors] == [
        "items.jsonl line 2: id", "items.jsonl line 3: id", "items.jsonl line 4", "items.jsonl line 5"]
    assert isinstance(result.errors[1], DuplicateIdError)
    assert read_items(path, skip_invalid=True) == result.items


def test_csv_errors(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
        return path

    cases = [
        (write("noid.csv", [["title"], ["x"]]), "noid.csv line 1: id"),
        (write("emptyid.csv", [["id", "title"], ["a", "x"], ["", "y"]]), "emptyid.csv line 3: id"),
        (write("cells.csv", [["id", "title"], ["a", "x", "extra"]]), "cells.csv line 2"),
        (write("dup.csv", [["id", "title", "id"], ["a", "x", "b"]]), "dup.csv line 1: header"),
        (write("bad.csv", [["id", "title", "unit price"], ["a", "x", "3"]]), "bad.csv line 2: metadata"),
        (write("attr.csv", [["id", "title", "attributes"], ["a", "x", "k=v"]]), "attr.csv line 2: attributes"),
        (write("notext.csv", [["id", "title", "price"], ["a", "", "3"]]), "notext.csv line 2: text"),
    ]
    for path, field in cases:
        with pytest.raises(InvalidInputError) as info:
            read_items(path)
        assert info.value.field == field, path.name
    dup_rows = write("dupid.csv", [["id", "title"], ["a", "x"], ["a", "y"]])
    with pytest.raises(DuplicateIdError, match="line 2") as info:
        read_items(dup_rows)
    assert info.value.field == "dupid.csv line 3: id"
    multi = write("multi.csv", [["id", "title"], ["a", "line one\nline two"], ["", "z"]])
    with pytest.raises(InvalidInputError) as info:
        read_items(multi)
    assert info.value.field == "multi.csv line 4: id"  # the quoted cell spans lines 2-3
    broken = tmp_path / "broken.csv"
    broken.write_text('id,title\na,"x"y\n', "utf-8")
    with pytest.raises(InvalidInputError, match="malformed CSV"):
        read_items(broken)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,title\na,ok\nb,caf\xe9\n")
    with pytest.raises(InvalidInputError, match="UTF-8") as info:
        read_items(latin)
    assert info.value.field == "latin.csv line 3"
    assert [it.id for it in read_items(latin, skip_invalid=True)] == ["a"]


def test_csv_header_only_is_empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("id,title\n\n", "utf-8")
    assert read_items(path) == []


def test_parquet_errors(tmp_path):
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": [1, 2], "title": ["x", "y"]}), ints)
    with pytest.raises(InvalidInputError, match="must be a string") as info:
        read_items(ints)
    assert info.value.field == "ints.parquet row 1: id"
    nan = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "title": ["x", "y"], "price": [1.0, float("nan")]}), nan)
    with pytest.raises(InvalidInputError) as info:
        read_items(nan)
    assert info.value.field == "nan.parquet row 2: metadata.price"
    assert read_items(nan, skip_invalid=True) == [Item("a", "x", metadata={"price": 1.0})]
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not a parquet file at all")
    with pytest.raises(InvalidInputError, match="Parquet") as info:
        read_items(junk)
    assert info.value.field == "path"


def test_path_errors(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "items.txt").write_text("x")
    for path, needle in [
        (tmp_path / "dir.jsonl", "is a directory"),
        (tmp_path / "items.txt", "unknown item file type"),
        (tmp_path / "missing.jsonl", "no such file"),
        (tmp_path, "unknown item file type"),
    ]:
        with pytest.raises(InvalidInputError, match=needle) as info:
            read_items(path)
        assert info.value.field == "path"


def test_check_item_normalises_python_items():
    item = check_item(Item("a", title="x", categories=["b"], metadata={"n": np.int64(3), "f": np.float32(0.5)}))
    assert item.categories == ("b",)
    assert item.metadata == {"n": 3, "f": 0.5} and type(item.metadata["n"]) is int
    with pytest.raises(InvalidInputError) as info:
        check_item({"id": "a"})
    assert info.value.field == "item"


# -- the catalog ----------------------------------------------------------------------------


def test_rows_are_stable_across_remove_and_readd():
    cat = Catalog()
    assert cat.upsert(items3()).tolist() == [0, 1, 2] and cat.version == 1
    assert cat.upsert([Item("d", title="New"), Item("a", title="Dune 2")]).tolist() == [3, 0]
    assert cat.version == 2 and len(cat) == 4 and cat.num_rows == 4
    assert cat.remove(["b", "b"]).tolist() == [1]
    assert cat.version == 3 and len(cat) == 3 and "b" not in cat and cat.num_rows == 4
    assert cat.live_rows().tolist() == [0, 2, 3] and cat.live_rows().dtype == np.int64
    assert not cat.is_live(1) and cat.is_live(np.int64(2)) and not cat.is_live(4) and not cat.is_live(-1)
    with pytest.raises(UnknownItemError):
        cat.row("b")
    with pytest.raises(UnknownItemError):
        cat.item_id(1)
    assert cat.title(1) == "b"  # removed rows still answer with their id
    assert cat.upsert([Item("e", title="E"), Item("b", title="Back")]).tolist() == [4, 1]  # old row reused
    assert cat.get("b") == Item("b", title="Back") and cat.item_at(1).title == "Back"
    assert cat.rows(["e", "a"]).tolist() == [4, 0] and cat.rows([]).dtype == np.int64
    assert [it.id for it in cat] == ["a", "b", "c", "d", "e"]
    assert cat.item_id(3) == "d" and cat.metadata(0) == {} and cat.metadata(2) == {}


def test_version_bumps_only_on_change():
    cat = Catalog()
    cat.upsert(items3())
    v = cat.version
    cat.upsert(items3())  # identical
    cat.upsert([])
    assert cat.version == v
    cat.upsert([Item("a", title="Dune", categories=("books",), metadata={"price": 8.0})])
    assert cat.version == v + 1 and cat.metadata(0) == {"price": 8.0}


def test_bad_batch_changes_nothing():
    cat = Catalog()
    cat.upsert(items3())
    before = (cat.version, list(cat), cat.num_rows)
    with pytest.raises(DuplicateIdError) as info:
        cat.upsert([Item("x", title="X"), Item("a", title="A2"), Item("x", title="X again")])
    assert info.value.field == "items[2].id" and "items[0]" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        cat.upsert([Item("y", title="Y"), Item("z", title="Z", metadata={"bad key": 1})])
    assert info.value.field == "items[1].metadata"
    with pytest.raises(InvalidInputError) as info:
        cat.upsert([Item("y", title="Y"), "z"])  # type: ignore[list-item]
    assert info.value.field == "items[1]"
    with pytest.raises(InvalidInputError) as info:
        cat.upsert([Item(5, title="Y")])  # type: ignore[arg-type]
    assert info.value.field == "items[0].id"
    with pytest.raises(UnknownItemError) as info:
        cat.remove(["a", "nope"])
    assert info.value.field == "ids[1]"
    with pytest.raises(InvalidInputError):
        cat.remove("a")
    assert (cat.version, list(cat), cat.num_rows) == before and "y" not in cat


def test_template_must_render_text():
    cat = Catalog("{brand}")
    assert cat.upsert([Item("a", title="x", attributes={"brand": "Acme"})]).tolist() == [0]
    with pytest.raises(InvalidInputError, match="renders empty") as info:
        cat.upsert([Item("b", title="x")])
    assert info.value.field == "items[0].text"
    big = Catalog("{title} {title}")
    with pytest.raises(InvalidInputError, match="more than") as info:
        big.upsert([Item("a", title="x" * (MAX_TEXT_CHARS // 2 + 1))])
    assert info.value.field == "items[0].text"


def test_text_is_rendered_cached_and_refreshed():
    cat = Catalog("{title} - {brand}")
    cat.upsert([Item("a", title="Anvil", attributes={"brand": "Acme"})])
    assert cat.text(0) == "Anvil - Acme" and cat.text(0) is cat.text(0)
    cat.upsert([Item("a", title="Anvil", attributes={"brand": "Bolt"})])
    assert cat.text(0) == "Anvil - Bolt"
    assert cat.render(Item("z", title="Z")) == "Z" and cat.template == "{title} - {brand}"
    cat.remove(["a"])
    with pytest.raises(UnknownItemError):
        cat.text(0)


def test_save_load_round_trip(tmp_path):
    cat = Catalog("{title}: {description}")
    cat.upsert(items3() + [Item("d", title="Ünïcode ✓", metadata={"flag": True, "n": -3, "s": "x"})])
    cat.remove(["b"])
    cat.save(tmp_path)
    loaded = Catalog.load(tmp_path)
    assert loaded.template == cat.template and loaded.version == cat.version
    assert list(loaded) == list(cat) and loaded.num_rows == 4 and len(loaded) == 3
    assert loaded.live_rows().tolist() == [0, 2, 3]
    assert [loaded.text(r) for r in (0, 2, 3)] == [cat.text(r) for r in (0, 2, 3)]
    assert type(loaded.metadata(3)["n"]) is int and type(loaded.metadata(0)["price"]) is float
    assert loaded.upsert([Item("b", title="again"), Item("e", title="E")]).tolist() == [1, 4]
    loaded.save(tmp_path)
    assert Catalog.load(tmp_path).get("b").title == "again"


def test_empty_catalog_round_trip(tmp_path):
    Catalog().save(tmp_path)
    loaded = Catalog.load(tmp_path)
    assert len(loaded) == 0 and loaded.num_rows == 0 and loaded.template == DEFAULT_TEMPLATE


def _corrupt(tmp_path, edit):
    cat = Catalog()
    cat.upsert(items3())
    cat.remove(["c"])
    cat.save(tmp_path, format="jsonl")  # the format before Parquet: still read
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(edit(path.read_bytes()))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda b: b[:-5], "line 4: truncated"),
        (lambda b: b.rsplit(b"\n", 2)[0] + b"\n", "header says 3 rows"),
        (lambda b: b.replace(b'"row": 1', b'"row": 7'), "line 3: expected the entry of row 1"),
        (lambda b: b.replace(b'"price": 9.5', b'"price": [1]'), "line 2:"),
        (lambda b: b.replace(b'"removed": "c"', b'"removed": "a"'), "line 4: id 'a' already has row 0"),
        (lambda b: b.replace(b'"live": 2', b'"live": 3'), "3 live items"),
        (lambda b: b.replace(b'"id": "b"', b'"id": "b\xff"'), "cannot read"),
        (lambda b: b"{}\n" + b.split(b"\n", 1)[1], "line 1: not a recsieve catalog"),
        (lambda b: b.replace(b'"template": "', b'"template": "{x[0]}'), "line 1: bad header"),
        (lambda b: b.replace(b"{", b"[", 2), "line 1: malformed"),
        (lambda b: b"", "line 1: missing"),
    ],
)
def test_load_corrupt_names_the_line(tmp_path, edit, needle):
    _corrupt(tmp_path, edit)
    with pytest.raises(CorruptStoreError, match=needle.replace("[", r"\[")):
        Catalog.load(tmp_path)


def test_load_other_version_and_missing_file(tmp_path):
    _corrupt(tmp_path, lambda b: b.replace(b'"format_version": 1', b'"format_version": 99'))
    with pytest.raises(IncompatibleVersionError, match="99"):
        Catalog.load(tmp_path)
    with pytest.raises(CorruptStoreError, match="cannot read"):
        Catalog.load(tmp_path / "nowhere")


def test_readers_survive_a_concurrent_writer():
    import threading

    cat = Catalog()
    cat.upsert([Item(f"i{k}", title=f"item {k}") for k in range(50)])
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                for row in cat.live_rows().tolist():
                    try:
                        cat.text(row), cat.metadata(row), cat.item_id(row), cat.title(row)
                    except UnknownItemError:
                        pass  # removed between listing and reading: allowed
                sum(1 for _ in cat)
            except BaseException as exc:  # any other error fails the test
                failures.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for k in range(200):
        cat.upsert([Item(f"i{k % 50}", title=f"item {k} v2"), Item(f"n{k}", title="new")])
        cat.remove([f"n{k}"])
    stop.set()
    for t in readers:
        t.join()
    assert failures == [] and len(cat) == 50 and cat.num_rows == 250


def test_demo_catalog_reads():
    from pathlib import Path

    import recsieve

    items = read_items(Path(recsieve.__file__).parent / "data" / "demo_items.jsonl")
    assert len(items) == 200 and all(isinstance(it.metadata.get("price"), float) for it in items)
    cat = Catalog()
    assert cat.upsert(items).tolist() == list(range(200))


def _mixed_items(n, tag=""):
    """Items with several metadata layouts, attributes and categories (some without)."""
    out = []
    for k in range(n):
        meta = {"price": k + 0.5, "n": k} if k % 3 == 0 else ({"flag": bool(k % 2), "s": f"s{k}"} if k % 3 == 1 else {})
        attrs = {"colour": f"c{k}", "size": str(k)} if k % 2 else {}
        out.append(Item(f"i{k}", title=f"item {k}{tag}", description=f"d{k}", categories=(f"cat{k % 4}",) * (k % 2),
                        attributes=attrs, metadata=meta))
    return out


def test_parquet_catalog_builds_rows_when_asked_and_keeps_writes(tmp_path):
    """A catalog loaded from Parquet answers exactly as the one saved, whichever rows are built
    first; writes to rows not yet built survive the later building of their block."""
    original = Catalog()
    original.upsert(_mixed_items(300))
    original.remove([f"i{k}" for k in range(0, 300, 7)])
    original.save(tmp_path)
    loaded = Catalog.load(tmp_path)
    # rows in blocks nobody has read yet: an upsert, a remove, a re-add, then their neighbours
    changes = [Item("i101", title="changed"), Item("i7", title="back again", metadata={"n": 1})]
    for cat in (original, loaded):
        cat.upsert(changes)
        cat.remove(["i202", "i150"])
    rows = list(range(original.num_rows))
    np.random.default_rng(0).shuffle(rows)
    for row in rows:
        assert loaded.is_live(row) == original.is_live(row)
        assert loaded.title(row) == original.title(row)
        if original.is_live(row):
            assert loaded.item_at(row) == original.item_at(row) and loaded.text(row) == original.text(row)
            assert loaded.is_current(original.item_at(row))
            assert list(loaded.metadata(row).items()) == list(original.metadata(row).items())
    assert list(loaded) == list(original) and len(loaded) == len(original)
    assert loaded.live_rows().tolist() == original.live_rows().tolist()
    assert loaded.get("i101").title == "changed" and "i202" not in loaded and loaded.get("i7").title == "back again"
    again = Catalog.load(tmp_path)  # iterating first builds every row, in whole-file chunks
    assert list(again) == [it for it in _mixed_items(300) if int(it.id[1:]) % 7]
    (tmp_path / "second").mkdir()
    loaded.save(tmp_path / "second")
    assert list(Catalog.load(tmp_path / "second")) == list(original)


def test_parquet_catalog_readers_build_rows_beside_a_writer(tmp_path):
    """Readers building rows from the file's columns while a writer replaces and removes rows:
    every read is whole, and the final state is the writer's."""
    import threading

    base = Catalog()
    base.upsert(_mixed_items(2000))
    base.save(tmp_path)
    cat = Catalog.load(tmp_path)
    stop, failures = threading.Event(), []

    def read(seed):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            row = int(rng.integers(0, 2000))
            try:
                item = cat.item_at(row)
                assert item.id == f"i{row}" and item.title.startswith(f"item {row}")
            except UnknownItemError:
                pass  # removed meanwhile
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

    readers = [threading.Thread(target=read, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    try:
        changed = _mixed_items(2000, tag=" v2")
        for lo in range(0, 2000, 50):
            cat.upsert(changed[lo : lo + 25])
            cat.remove([f"i{k}" for k in range(lo + 25, lo + 30)])
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not failures, failures[:3]
    for row in range(2000):
        k = row % 50
        if 25 <= k < 30:
            assert not cat.is_live(row)
        else:
            assert cat.item_at(row).title == f"item {row}" + (" v2" if k < 25 else "")


def test_parquet_catalog_malformed_row_is_named(tmp_path):
    """A row whose columns disagree (3 attribute names, 2 values) is refused when it is built,
    with an error naming the file and the row."""
    Catalog().save(tmp_path)  # a valid header to reuse
    header = json.loads(pq.read_schema(tmp_path / "catalog.parquet").metadata[b"recsieve.catalog"])
    header.update(num_rows=1, live=1)
    from recsieve.catalog_parquet import write_catalog_parquet

    write_catalog_parquet(tmp_path / "catalog.parquet", header, ["x"], [Item("x", title="t", attributes={"a": "1"})])
    table = pq.read_table(tmp_path / "catalog.parquet")
    bad = table.set_column(table.schema.get_field_index("attr_keys"), "attr_keys",
                           pa.array([["a", "b", "c"]], pa.list_(pa.string())))
    pq.write_table(bad, tmp_path / "catalog.parquet")
    cat = Catalog.load(tmp_path)
    assert "x" in cat and len(cat) == 1
    with pytest.raises(CorruptStoreError, match=r"catalog\.parquet: row 0 is malformed"):
        cat.item_at(0)
