"""Constraints stated in plain words: the parser, and the engine holding its answers to them."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from test_config import WordHashEmbedder

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.engine.constraints import CategoryVocabulary, Constraints, both, parse_instruction
from recsieve.engine.requests import request_for
from recsieve.errors import InvalidInputError
from recsieve.evaluation.instructions import parsed_as_asked
from recsieve.filters import parse_filter

SHOP = {"price": "number", "in_stock": "bool", "category": "string"}
MOVIES = {"year": "number", "genre": "string"}
BOTH = {"price": "number", "year": "number"}
CATEGORIES = ("Kitchen", "Garden", "Toys", "Books", "Outdoor", "Home & Kitchen", "News")
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def parse(text, fields=BOTH, categories=CATEGORIES + GENRES):
    return parse_instruction(text, fields=fields, categories=categories)


# -- price -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expr, phrase", [
    ("something for the kitchen, under $50", "price < 50", "price under 50"),
    ("below $50", "price < 50", "price under 50"),
    ("less than 50 dollars", "price < 50", "price under 50"),
    ("cheaper than 50", "price < 50", "price under 50"),
    ("priced under 50", "price < 50", "price under 50"),
    ("at most $50", "price <= 50", "price at most 50"),
    ("no more than $50", "price <= 50", "price at most 50"),
    ("max $50", "price <= 50", "price at most 50"),
    ("$50 or less", "price <= 50", "price at most 50"),
    ("50 bucks max", "price <= 50", "price at most 50"),
    ("under 50€", "price < 50", "price under 50"),
    ("under £40", "price < 40", "price under 40"),
    ("over $20", "price > 20", "price over 20"),
    ("above 20 euros", "price > 20", "price over 20"),
    ("more than $20", "price > 20", "price over 20"),
    ("at least $20", "price >= 20", "price at least 20"),
    ("$20 or more", "price >= 20", "price at least 20"),
    ("between $10 and $30", "price >= 10 and price <= 30", "price 10 to 30"),
    ("$10-$30", "price >= 10 and price <= 30", "price 10 to 30"),
    ("10-30 dollars", "price >= 10 and price <= 30", "price 10 to 30"),
    ("from $10 to $30", "price >= 10 and price <= 30", "price 10 to 30"),
    ("$1,000 or less", "price <= 1000", "price at most 1000"),
    ("under $49.99", "price < 49.99", "price under 49.99"),
    ("nothing over $50", "price <= 50", "price at most 50"),
    ("I don't want anything over $50", "price <= 50", "price at most 50"),
])
def test_price_phrases(text, expr, phrase):
    c = parse(text)
    assert c.filter is not None and c.filter.text == expr and c.filter.tree == parse_filter(expr).tree
    assert c.phrases == (phrase,)


@pytest.mark.parametrize("text", ["toys for kids under 5", "less than 2 hours long", "a 50 piece puzzle", "$50"])
def test_numbers_without_a_price_are_not_prices(text):
    assert parse(text).filter is None


def test_price_bounds_all_hold():
    c = parse("over $20 but under $50")
    assert c.filter.matches({"price": 30}) and not c.filter.matches({"price": 20}) and not c.filter.matches({"price": 50})
    assert c.phrases == ("price over 20", "price under 50")


# -- year --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, inside, outside, phrase", [
    ("a comedy from the 90s", [1990, 1999], [1989, 2000], "from the 1990s"),
    ("something from the 1990s", [1990, 1999], [1989, 2000], "from the 1990s"),
    ("'90s hits", [1995], [1985], "from the 1990s"),
    ("90's music", [1995], [1985], "from the 1990s"),
    ("the nineties", [1995], [1985], "from the 1990s"),
    ("80s movies", [1980, 1989], [1979, 1990], "from the 1980s"),
    ("a 2000s classic", [2000, 2009], [1999, 2010], "from the 2000s"),
    ("before 1980", [1979], [1980], "before 1980"),
    ("older than 1990", [1989], [1990], "before 1990"),
    ("pre-1980 westerns", [1979], [1980], "before 1980"),
    ("after 2005", [2006], [2005], "after 2005"),
    ("since 2005", [2005], [2004], "2005 or later"),
    ("2005 or later", [2005], [2004], "2005 or later"),
    ("from 1995", [1995], [1994, 1996], "from 1995"),
    ("in 1995", [1995], [1994, 1996], "from 1995"),
    ("from 1995 to 2000", [1995, 2000], [1994, 2001], "from 1995 to 2000"),
    ("between 1995 and 2000", [1995, 2000], [1994, 2001], "from 1995 to 2000"),
    ("before the 80s", [1979], [1980], "before 1980"),
    ("after the 80s", [1990], [1989], "1990 or later"),
    ("not before 1980", [1980], [1979], "1980 or later"),
    ("the 80s or 90s", [1985, 1995], [1975, 2005], "from the 1980s or the 1990s"),
])
def test_year_phrases(text, inside, outside, phrase):
    c = parse(text)
    assert c.filter is not None and c.phrases == (phrase,)
    assert all(c.filter.matches({"year": y}) for y in inside)
    assert not any(c.filter.matches({"year": y}) for y in outside)
    assert not c.filter.matches({"price": 1995})  # an item without a year never passes


def test_price_and_year_together_and_their_order():
    c = parse("a drama from the 90s under $20")
    assert c.categories == ("Drama",) and c.phrases == ("from the 1990s", "price under 20")
    assert c.filter.matches({"year": 1994, "price": 10}) and not c.filter.matches({"year": 1994, "price": 25})
    assert c.describe() == "drama; from the 1990s; price under 20"


# -- categories ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, names", [
    ("something for the kitchen", ("Kitchen",)),
    ("KITCHEN stuff", ("Kitchen",)),
    ("a toy for my niece", ("Toys",)),
    ("some comedies", ("Comedy",)),
    ("I'm in the mood for sci-fi", ("Sci-Fi",)),
    ("sci fi please", ("Sci-Fi",)),
    ("something film-noir", ("Film-Noir",)),
    ("film noir tonight", ("Film-Noir",)),
    ("a good children's one, please", ("Children's",)),
    ("children\u2019s films", ("Children's",)),
    ("home and kitchen things", ("Home & Kitchen",)),
    ("home & kitchen", ("Home & Kitchen",)),
    ("garden or outdoor gear", ("Garden", "Outdoor")),
    ("something new", ()),  # "news" does not lose its s to match "new"
    ("a kitchenette", ()),  # whole words only
    ("gardening", ()),
])
def test_categories_named(text, names):
    assert parse(text).categories == names


@pytest.mark.parametrize("text, names", [
    ("no horror", ()),
    ("not kitchen", ()),
    ("anything but comedy", ()),
    ("without drama", ()),
    ("I don't want any horror", ()),
    ("a comedy, but no horror", ("Comedy",)),
    ("no horror, a comedy", ("Comedy",)),
    ("comedy rather than drama", ("Comedy",)),
    ("comedy, not a horror movie", ("Comedy",)),
    ("no comedy, comedy", ()),  # said both ways: not asked for
])
def test_negated_mentions_are_skipped(text, names):
    assert parse(text).categories == names


def test_negated_decades_and_years_give_no_filter():
    assert parse("nothing from the 90s").filter is None
    assert parse("not in 1995").filter is None


def test_every_request_the_generator_makes_is_read_as_asked():
    items = [Item(str(i), title=f"Film {i}", categories=(g,), metadata={"year": y})
             for i, (g, y) in enumerate((g, y) for g in GENRES for y in (1915, 1925, 1955, 1999, 2000, 2010))]
    vocab = CategoryVocabulary(GENRES)
    rng = np.random.default_rng(0)
    for item in items:
        for _ in range(8):
            request = request_for(item, rng)
            c = parse_instruction(request.text, fields=MOVIES, categories=vocab)
            assert parsed_as_asked(request, c), (request, c)


# -- what the catalog lacks; hostile text --------------------------------------------------------


def test_fields_the_catalog_lacks_give_no_filter():
    text = "a comedy from the 90s under $50"
    assert parse(text, fields={}).filter is None
    assert parse(text, fields={"price": "string", "year": "bool"}).filter is None  # not numbers
    assert parse(text, fields={"price": "number"}).filter.text == "price < 50"
    assert parse(text, fields=["year"]).filter.fields == {"year"}
    assert parse(text, categories=()).categories == ()
    assert parse(text, fields={}, categories=()) == Constraints() and not Constraints()


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch pwned')",
    "price < 50 or __import__('os').system('x') under $50",
    "'; DROP TABLE items; -- under $50",
    "{{7*7}} ${7*7} `rm -rf /` under $50",
    "year >= 0 or True) or (1 == 1",
    "(" * 500 + "under $50" + ")" * 500,
])
def test_hostile_text_is_only_matched(text, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the parser executed something")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(builtins, "__import__", refuse)
    c = parse(text)
    monkeypatch.undo()
    assert c.filter is None or c.filter.text == "price < 50"
    assert not (tmp_path / "pwned").exists()


def test_empty_and_huge_text():
    assert parse("") == Constraints() and parse("   ") == Constraints()
    with pytest.raises(InvalidInputError, match="instruction"):
        parse("under $50 " * 300)
    with pytest.raises(InvalidInputError, match="instruction"):
        parse(None)  # type: ignore[arg-type]
    c = parse("kitchen " * 200 + "under $50")  # long but accepted
    assert c.categories == ("Kitchen",) and c.filter.text == "price < 50"


def test_both_filters_must_hold():
    a, b = parse_filter("in_stock == true"), parse_filter("price < 50")
    f = both(a, b)
    assert f.matches({"in_stock": True, "price": 10})
    assert not f.matches({"in_stock": False, "price": 10}) and not f.matches({"in_stock": True, "price": 60})
    assert both(a, None) is a and both(None, b) is b and both(None, None) is None
    assert parse_filter(f.text).tree == f.tree


# -- the engine --------------------------------------------------------------------------------


def shop_items():
    rows = [("kit-1", "kitchen", "cast iron frying pan", 25.0), ("kit-2", "kitchen", "chef's knife", 45.0),
            ("kit-3", "kitchen", "ceramic teapot", 12.5), ("kit-4", "kitchen", "espresso machine", 199.0),
            ("kit-5", "kitchen", "stand mixer", 320.0), ("kit-6", "kitchen", "copper pot set", 150.0)]
    rows += [(f"gar-{i}", "garden", f"garden trowel model {i}", 10.0 + 9 * i) for i in range(8)]
    rows += [(f"out-{i}", "outdoor", f"hiking backpack model {i}", 15.0 + 30 * i) for i in range(8)]
    rows += [(f"boo-{i}", "books", f"paperback novel volume {i}", 5.0 + 4 * i) for i in range(8)]
    return [Item(i, title=t, categories=(c,), metadata={"price": p, "in_stock": not i.endswith("-2"), "category": c})
            for i, c, t, p in rows]


@pytest.fixture
def shop(tmp_path):
    config = EngineConfig(index="flat", recall_n=40, refresh_threads=0, cache="memory")
    eng = Engine.create(tmp_path / "shop", config, embedder=WordHashEmbedder())
    eng.upsert_items(shop_items())
    eng.record([Event("hiker", f"out-{i}", "click") for i in (1, 2, 3)])
    yield eng
    eng.close()


def meta(engine, item_id):
    return engine.catalog.get(item_id).metadata


@pytest.mark.parametrize("user", ["hiker", "newcomer"])
def test_recommend_holds_price_and_puts_the_named_category_first(shop, user):
    request = "something for the kitchen, under $50"
    recs = shop.recommend(user, 10, instruction=request)
    assert len(recs) == 10
    assert all(meta(shop, r.item_id)["price"] < 50 for r in recs)
    kitchen = [meta(shop, r.item_id)["category"] == "kitchen" for r in recs]
    assert kitchen[:3] == [True] * 3 and not any(kitchen[3:])  # the 3 kitchen items under $50, then the rest
    assert all(f"matches your request {request!r} (kitchen; price under 50)" in r.reason for r in recs[:3])
    assert all("price under 50; not kitchen: too few matches" in r.reason for r in recs[3:])
    # few enough asked for: nothing outside the category
    assert [meta(shop, r.item_id)["category"] for r in shop.recommend(user, 3, instruction=request)] == ["kitchen"] * 3
    assert shop.recommend(user, 10, instruction=request) == recs  # the cached answer is the same


def test_the_users_own_filter_still_applies(shop):
    recs = shop.recommend("hiker", 10, instruction="something for the kitchen, under $50", filters="in_stock == true")
    assert recs and all(meta(shop, r.item_id)["price"] < 50 and meta(shop, r.item_id)["in_stock"] for r in recs)
    assert "kit-2" not in [r.item_id for r in recs]  # kitchen and under $50, but out of stock
    assert [meta(shop, r.item_id)["category"] for r in recs[:2]] == ["kitchen"] * 2
    # a filter that contradicts the request leaves nothing: both must hold
    assert shop.recommend("hiker", 10, instruction="under $50", filters="price > 100") == []


def test_category_alone_and_negation(shop):
    recs = shop.recommend("hiker", 6, instruction="a book to read")
    assert [meta(shop, r.item_id)["category"] for r in recs] == ["books"] * 6
    assert all("(books)" in r.reason for r in recs)
    negated = shop.recommend("hiker", 10, instruction="no books, something under $30")
    assert all(meta(shop, r.item_id)["price"] < 30 for r in negated)
    assert all("(price under 30)" in r.reason and "books" not in r.reason.split("(")[-1] for r in negated)
    assert shop.constraints("no books, something under $30").categories == ()


def test_rank_applies_the_same_constraints(shop):
    view = shop.users.get("hiker")
    rows, scores = shop.rank(view, instruction="garden tools under $40")
    metas = [shop.catalog.metadata(int(r)) for r in rows]
    assert all(m["price"] < 40 for m in metas)
    garden = [m["category"] == "garden" for m in metas]
    assert garden[: sum(garden)] == [True] * sum(garden) and sum(garden) == 4
    assert np.all(np.diff(scores) <= 0)


def test_a_field_the_catalog_lacks_filters_nothing(tmp_path):
    config = EngineConfig(index="flat", recall_n=20, refresh_threads=0, cache="none")
    items = [Item(f"m{i}", title=f"film number {i}", categories=("Comedy" if i % 2 else "Drama",),
                  metadata={"year": 1980 + 3 * i}) for i in range(10)]
    with Engine.create(tmp_path / "films", config, embedder=WordHashEmbedder()) as eng:
        eng.upsert_items(items)
        recs = eng.recommend("u", 10, instruction="a comedy under $5")  # no price field: no price filter
        assert len(recs) == 10 and all("price" not in r.reason for r in recs)
        assert [eng.catalog.get(r.item_id).categories for r in recs[:5]] == [("Comedy",)] * 5
        nineties = eng.recommend("u", 10, instruction="a comedy from the 90s")
        years = [eng.catalog.get(r.item_id).metadata["year"] for r in nineties]
        assert years and all(1990 <= y < 2000 for y in years)
        assert nineties[0].reason.endswith("(comedy; from the 1990s)")
        # a new category is read once the catalog holds it
        eng.upsert_items([Item("m99", title="a western film", categories=("Western",), metadata={"year": 1995})])
        assert eng.constraints("a western").categories == ("Western",)
        assert [r.item_id for r in eng.recommend("u", 1, instruction="a western from the 90s")] == ["m99"]
