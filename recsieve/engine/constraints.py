"""Constraints stated in a plain-words request, parsed (never executed) into metadata filters.

A request such as ``"something for the kitchen, under $50"`` or ``"a comedy from the 90s"``
names things the answer must have. :func:`parse_instruction` reads three kinds of them:

- **price** (only when the catalog has a numeric ``price`` field): ``under / below / less than /
  cheaper than $50`` (``price < 50``), ``at most / max / up to $50``, ``$50 or less``
  (``price <= 50``), ``over / above / more than $20`` (``price > 20``), ``at least $20``,
  ``$20 or more`` (``price >= 20``), ``between $10 and $30``, ``$10-$30``, ``from $10 to $30``
  (``price >= 10 and price <= 30``). An amount needs a currency (``$50``, ``50$``, ``€50``,
  ``£50``, ``50 dollars / bucks / euros / pounds``) unless a price word comes first
  (``priced under 50``, ``cheaper than 50``, ``budget of 50``);
- **year** (only when the catalog has a numeric ``year`` field): decades (``from the 90s``,
  ``1990s``, ``'90s``, ``90's``, ``nineties``, ``80s movies``: ``year >= 1990 and year < 2000``;
  two digits mean 1920-1990, or 2000 and 2010 for ``00s`` and ``10s``), ``before 1980`` /
  ``older than 1980`` / ``pre-1980`` (``year < 1980``), ``until 1980`` (``<=``), ``after 2005``
  (``>``), ``since 2005`` / ``2005 or later`` (``>=``), ``from 1995`` / ``in 1995``
  (``year == 1995``), ``from 1995 to 2000`` / ``1995-2000`` (both ends included). Several
  decades or single years are alternatives (``80s or 90s``); bounds all hold;
- **categories**: a category of the catalog named as a word or words, case-insensitively, as
  whole words, in its singular or simple plural (``toy`` / ``toys``, ``comedy`` / ``comedies``),
  with or without its punctuation (``sci-fi``, ``sci fi``; ``children's``, ``childrens``,
  ``children``; ``home & kitchen``, ``home and kitchen``).

A mention right after a negation in the same clause (``no horror``, ``not kitchen``, ``anything
but comedy``, ``without drama``, ``I don't want any horror``, ``non-fiction``) is not a category
asked for, nor a decade or year asked for; a negated bound is turned round (``nothing over $50``
is ``price <= 50``, ``not before 1980`` is ``year >= 1980``). Constraints on fields the catalog
lacks (or holds as text) give no filter. The filter is built by
:func:`~recsieve.filters.parse_filter` from generated text, so it pushes down into indexes exactly
like a caller's filter. The text is only matched against regular expressions and dictionaries;
nothing in it is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from recsieve.errors import InvalidInputError
from recsieve.filters import Filter, parse_filter

__all__ = ["Constraints", "CategoryVocabulary", "parse_instruction", "both", "MAX_TEXT"]

#: Longest text parsed, in characters (the engine refuses longer instructions before this).
MAX_TEXT = 2_000


@dataclass(frozen=True)
class Constraints:
    """What a request asks for: ``filter`` (price and year, or ``None``), ``categories`` (catalog
    category names, as the catalog spells them, in the order the text names them) and ``phrases``
    (the filter's parts in words, e.g. ``"price under 50"``, ``"from the 1990s"``)."""

    filter: Filter | None = None
    categories: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.filter is not None or bool(self.categories)

    def describe(self, in_category: bool = True) -> str:
        """The constraints in words for an explanation: ``"kitchen; price under 50"``. For an item
        outside the named categories (``in_category=False``: it only fills up a short list) the
        categories are said to have had too few matches."""
        named = " or ".join(dict.fromkeys(c.lower() for c in self.categories))
        parts = list(self.phrases)
        if named:
            parts.insert(0, named) if in_category else parts.append(f"not {named}: too few matches")
        return "; ".join(parts)


def both(a: Filter | None, b: Filter | None) -> Filter | None:
    """A filter that passes what both pass (``None`` stands for no filter)."""
    if a is None or b is None:
        return a if b is None else b
    return Filter(f"({a.text}) and ({b.text})", ("and", [a.tree, b.tree]))


# -- text ------------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u2032": "'", "`": "'", "\u2013": "-", "\u2014": "-",
                         "\u2212": "-", "\u00a0": " "})
#: Where a clause ends: a negation before it does not reach past.
_CLAUSE_END = re.compile(r"[,.;:!?()\[\]{}\n]")
_NEGATORS = (r"no|not|non|never|nothing|none|without|except|excluding|exclude|avoid|avoiding|hate|dislike|"
             r"don't|dont|doesn't|doesnt|isn't|aren't|won't|can't|anything but|everything but|all but|but not|"
             r"other than|rather than|instead of|apart from")
_FILLERS = (r"a|an|any|the|some|more|too|really|very|so|want|wanting|like|need|into|of|in|from|for|please|"
            r"interested|fan|big|sure|at|all|anything|something|with|that|is|are|be|much|sort|kind|type|types|"
            r"kinds|sorts|i|me|my|we|us|you|it|movies?|films?|items?|stuff|things?|products?")
_NEGATED = re.compile(rf"(?:\b(?:{_NEGATORS})\b|\bnon)(?:[\s\-]+(?:{_FILLERS})\b){{0,3}}[\s\-]*$")


def _negated(text: str, start: int) -> bool:
    """Whether a negation (in the same clause, at most three filler words back) comes before ``start``."""
    before = text[max(0, start - 80):start]
    ends = list(_CLAUSE_END.finditer(before))
    if ends:
        before = before[ends[-1].end():]
    return _NEGATED.search(before) is not None


def _number(s: str) -> int | float:
    value = float(s.replace(",", ""))
    return int(value) if value.is_integer() else value


def _show(value: int | float) -> str:
    return str(value)


class _Spans:
    """Character spans already read, so one phrase is never read twice."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, int]] = []

    def free(self, m: re.Match) -> bool:
        return all(m.end() <= a or m.start() >= b for a, b in self.taken)

    def take(self, m: re.Match) -> None:
        self.taken.append((m.start(), m.end()))


# -- price -----------------------------------------------------------------------------------

_NUM = r"(?<![\w.,])(?:\d{1,3}(?:,\d{3}){1,3}|\d{1,9})(?:\.\d{1,2})?(?![\d%])(?!\.\d)"
_NUM_RE = re.compile(r"(?:\d{1,3}(?:,\d{3}){1,3}|\d{1,9})(?:\.\d{1,2})?")
_CURRENCY = r"(?:[$€£]|\b(?:dollars?|bucks?|euros?|pounds?|quid|usd|eur|gbp)\b)"
_HAS_CURRENCY = re.compile(_CURRENCY)
_AMOUNT = rf"(?:[$€£]\s?)?{_NUM}(?:\s?{_CURRENCY})?"
_PRICE_WORD = r"(?:price[sd]?|priced|costs?|costing|spend|spending|budget(?:\s+is)?|budget\s+of|paying|pay)"
_PRICE_PREFIX = rf"(?:(?P<pw>{_PRICE_WORD})\s+(?:is\s+|of\s+)?)?"
_UPPER = {"under": "<", "below": "<", "less than": "<", "cheaper than": "<", "lower than": "<",
          "at most": "<=", "no more than": "<=", "not more than": "<=", "max": "<=", "maximum": "<=",
          "up to": "<=", "within": "<=", "tops": "<="}
_LOWER = {"over": ">", "above": ">", "more than": ">", "pricier than": ">", "higher than": ">",
          "at least": ">=", "no less than": ">=", "not less than": ">=", "min": ">=", "minimum": ">=",
          "upwards of": ">=", "starting at": ">="}
_SUFFIX = {"or less": "<=", "or under": "<=", "or below": "<=", "or cheaper": "<=", "max": "<=", "maximum": "<=",
           "tops": "<=", "at most": "<=", "or more": ">=", "or over": ">=", "or above": ">=", "and up": ">=",
           "and above": ">=", "minimum": ">=", "min": ">=", "at least": ">="}


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))


_PRICE_RANGE = re.compile(rf"{_PRICE_PREFIX}(?:\b(?:between|from)\s+(?P<a>{_AMOUNT})\s*(?:and|to|-)\s*(?P<b>{_AMOUNT})"
                          rf"|(?P<c>{_AMOUNT})\s*(?:-|\bto\b)\s*(?P<d>{_AMOUNT}))")
_PRICE_BOUND = re.compile(rf"{_PRICE_PREFIX}\b(?P<op>{_alternatives([*_UPPER, *_LOWER])})\s+(?:a\s+)?"
                          rf"(?P<a>{_AMOUNT})")
_PRICE_SUFFIX = re.compile(rf"(?P<a>{_AMOUNT})\s*(?P<op>{_alternatives(_SUFFIX)}\b|\+)")
_FLIP = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_PRICE_WORDS = {"<": "under", "<=": "at most", ">": "over", ">=": "at least"}


def _price(text: str, spans: _Spans) -> list[tuple[int, str, str]]:
    """``(position, filter part, phrase)`` for each price constraint in ``text``."""
    out: list[tuple[int, str, str]] = []
    for m in _PRICE_RANGE.finditer(text):
        if not spans.free(m) or not (_HAS_CURRENCY.search(m.group()) or m.group("pw")):
            continue
        ends = ("a", "b") if m.group("a") else ("c", "d")
        lo, hi = sorted(_number(_NUM_RE.search(m.group(g)).group()) for g in ends)
        spans.take(m)
        out.append((m.start(), f"price >= {lo} and price <= {hi}", f"price {_show(lo)} to {_show(hi)}"))
    for m in _PRICE_BOUND.finditer(text):
        op_word = " ".join(m.group("op").split())
        if not spans.free(m) or not (_HAS_CURRENCY.search(m.group("a")) or m.group("pw")
                                     or op_word in ("cheaper than", "pricier than")):
            continue
        spans.take(m)
        op = _UPPER.get(op_word) or _LOWER[op_word]
        if _negated(text, m.start()):
            op = _FLIP[op]
        value = _number(_NUM_RE.search(m.group("a")).group())
        out.append((m.start(), f"price {op} {value}", f"price {_PRICE_WORDS[op]} {_show(value)}"))
    for m in _PRICE_SUFFIX.finditer(text):
        if not spans.free(m) or not _HAS_CURRENCY.search(m.group("a")):
            continue
        spans.take(m)
        op = ">=" if m.group("op") == "+" else _SUFFIX[" ".join(m.group("op").split())]
        value = _number(_NUM_RE.search(m.group("a")).group())
        out.append((m.start(), f"price {op} {value}", f"price {_PRICE_WORDS[op]} {_show(value)}"))
    return out


# -- year ------------------------------------------------------------------------------------

_YEAR = r"(?<![\w$€£.,'])(?:1[89]\d\d|20\d\d)(?![\d%]|'?s\b)"
_DECADE_WORDS = {"twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
                 "seventies": 1970, "eighties": 1980, "nineties": 1990, "noughties": 2000, "aughts": 2000}
_DECADE = (rf"(?:(?<![\w$€£.,'])'?(?:1[89]\d0|20\d0|\d0)'?s\b|\b(?:{'|'.join(_DECADE_WORDS)})\b)")
_YEAR_OR_DECADE = rf"(?:the\s+)?(?:(?P<y>{_YEAR})|(?P<d>{_DECADE}))"
_BEFORE = {"before": "<", "pre": "<", "prior to": "<", "older than": "<", "earlier than": "<", "until": "<=",
           "till": "<=", "up to": "<="}
_AFTER = {"after": ">", "post": ">", "later than": ">", "newer than": ">", "more recent than": ">", "since": ">=",
          "starting in": ">=", "from after": ">"}
_YEAR_RANGE = re.compile(rf"\bbetween\s+(?P<a>{_YEAR})\s*(?:and|to|-)\s*(?P<b>{_YEAR})"
                         rf"|(?:\bfrom\s+)?(?P<c>{_YEAR})\s*(?:-|\bto\b|\buntil\b|\btill\b)\s*(?P<d>{_YEAR})")
_YEAR_BOUND = re.compile(rf"\b(?P<op>{_alternatives([*_BEFORE, *_AFTER])})\s*-?\s*{_YEAR_OR_DECADE}")
_YEAR_SUFFIX = re.compile(rf"(?P<y>{_YEAR})\s*(?P<op>or\s+(?:later|newer|after)|onwards?|and\s+(?:later|after|up)|\+"
                          rf"|or\s+(?:earlier|older|before))")
_YEAR_POINT = re.compile(rf"\b(?:from|in|of|made\s+in|released\s+in)\s+(?:the\s+year\s+)?(?P<y>{_YEAR})")
_DECADE_RE = re.compile(_DECADE)
_YEAR_WORDS = {"<": "before {}", "<=": "{} or earlier", ">": "after {}", ">=": "{} or later"}


def _decade(s: str) -> int:
    if s in _DECADE_WORDS:
        return _DECADE_WORDS[s]
    value = int(s.replace("'", "").rstrip("s"))
    if value >= 100:
        return value
    return 2000 + value if value < 20 else 1900 + value


def _year(text: str, spans: _Spans) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    """``(bounds, alternatives)``: year constraints that all hold, and decades or single years of
    which one must (each ``(position, filter part, phrase)``)."""
    bounds: list[tuple[int, str, str]] = []
    points: list[tuple[int, str, str]] = []
    for m in _YEAR_RANGE.finditer(text):
        if spans.free(m) and not _negated(text, m.start()):
            spans.take(m)
            ends = ("a", "b") if m.group("a") else ("c", "d")
            lo, hi = sorted(int(m.group(g)) for g in ends)
            bounds.append((m.start(), f"year >= {lo} and year <= {hi}", f"from {lo} to {hi}"))
    for m in _YEAR_BOUND.finditer(text):
        if not spans.free(m):
            continue
        spans.take(m)
        op_word = " ".join(m.group("op").split())
        op = _BEFORE.get(op_word) or _AFTER[op_word]
        if m.group("y"):
            year = int(m.group("y"))
        else:  # before the 80s: before 1980; after the 80s: from 1990 on
            year = _decade(m.group("d"))
            if op in (">", "<="):
                op, year = (">=", year + 10) if op == ">" else ("<", year + 10)
        if _negated(text, m.start()):
            op = _FLIP[op]
        bounds.append((m.start(), f"year {op} {year}", _YEAR_WORDS[op].format(year)))
    for m in _YEAR_SUFFIX.finditer(text):
        if not spans.free(m):
            continue
        spans.take(m)
        op = "<=" if re.search(r"earlier|older|before", m.group("op")) else ">="
        year = int(m.group("y"))
        bounds.append((m.start(), f"year {op} {year}", _YEAR_WORDS[op].format(year)))
    for m in _YEAR_POINT.finditer(text):
        if spans.free(m):
            spans.take(m)
            if not _negated(text, m.start()):
                points.append((m.start(), f"year == {int(m.group('y'))}", f"from {int(m.group('y'))}"))
    for m in _DECADE_RE.finditer(text):
        if spans.free(m):
            spans.take(m)
            if not _negated(text, m.start()):
                d = _decade(m.group())
                points.append((m.start(), f"year >= {d} and year < {d + 10}", f"from the {d}s"))
    return bounds, points


# -- categories ------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+")
#: Words a plural or singular form made from a category name must not be (``news`` -> ``new``).
_STOP = frozenset("new good best one ones thing things some any all more less it its is as us was his has this "
                  "the for and not no out in on at to of".split())
_MAX_WORDS = 6


def _forms(word: str) -> set[str]:
    """``word`` and its simple singular or plural."""
    out = {word}
    if not word.isalpha() or len(word) < 3:
        return out
    if word.endswith("ies") and len(word) > 4:
        out.add(word[:-3] + "y")
    elif word.endswith(("ses", "xes", "zes", "ches", "shes")):
        out.add(word[:-2])
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        out.add(word[:-1])
    if word.endswith("y") and word[-2] not in "aeiou":
        out.add(word[:-1] + "ies")
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        out.add(word + "es")
    else:
        out.add(word + "s")
    return {w for w in out if w == word or (len(w) >= 3 and w not in _STOP)}


class CategoryVocabulary:
    """A catalog's category names, looked up by the words that name them.

    Each name is keyed by its words run together (``Sci-Fi``: ``scifi``; ``Home & Kitchen``:
    ``homekitchen`` and ``homeandkitchen``; ``Children's``: ``childrens`` and ``children``), with
    its last word also in singular or plural. Build it once per catalog version; lookups scan the
    text's words, not the vocabulary, so any number of names costs the same per request.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._keys: dict[str, list[str]] = {}
        self.words = 1
        for name in dict.fromkeys(n for n in names if isinstance(n, str)):
            norm = name.lower().translate(_QUOTES)
            variants = {norm.replace("'", ""), re.sub(r"'s\b", "", norm)}
            variants |= {v.replace("&", " and ") for v in variants}
            for v in variants:
                tokens = _TOKEN.findall(v)
                if not tokens or len(tokens) > _MAX_WORDS:
                    continue
                self.words = max(self.words, len(tokens))
                for last in _forms(tokens[-1]):
                    key = "".join(tokens[:-1]) + last
                    if len(key) >= 2 and not key.isdigit():
                        names_of = self._keys.setdefault(key, [])
                        if name not in names_of:
                            names_of.append(name)

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, text: str, taken: _Spans | None = None) -> list[tuple[int, str, bool]]:
        """``(position, name, negated)`` of each mention in lower-cased ``text``, longest match first."""
        tokens = [m for m in _TOKEN.finditer(text) if taken is None or taken.free(m)]
        out = []
        i = 0
        while i < len(tokens):
            for n in range(min(self.words, len(tokens) - i), 0, -1):
                group = tokens[i:i + n]
                if any(group[j + 1].start() - group[j].end() > 3 for j in range(n - 1)):
                    continue  # words of one name stand next to each other
                names = self._keys.get("".join(t.group() for t in group))
                if names:
                    neg = _negated(text, group[0].start())
                    out.extend((group[0].start(), name, neg) for name in names)
                    i += n
                    break
            else:
                i += 1
        return out


# -- the parser ------------------------------------------------------------------------------


def _numeric(fields: Mapping[str, str] | Collection[str], name: str) -> bool:
    if isinstance(fields, Mapping):
        return fields.get(name) == "number"
    return name in fields


def parse_instruction(text: str, *, fields: Mapping[str, str] | Collection[str],
                      categories: CategoryVocabulary | Iterable[str] = ()) -> Constraints:
    """The constraints ``text`` states (see the module docstring).

    ``fields``: the catalog's metadata fields, as a mapping of field to kind (``"number"``,
    ``"string"``, ``"bool"``: the engine's field kinds) or a collection of numeric field names;
    price and year constraints need a numeric ``price`` / ``year``. ``categories``: the catalog's
    category names, or a :class:`CategoryVocabulary` built from them (reuse it across requests).
    Empty text states nothing; text that is not a string or is longer than :data:`MAX_TEXT`
    characters raises :class:`~recsieve.errors.InvalidInputError`.

    >>> c = parse_instruction("something for the kitchen, under $50", fields={"price": "number"},
    ...                       categories=["Kitchen", "Garden"])
    >>> c.filter.text, c.categories, c.describe()
    ('price < 50', ('Kitchen',), 'kitchen; price under 50')
    """
    if not isinstance(text, str):
        raise InvalidInputError("instruction", text, "must be a string")
    if len(text) > MAX_TEXT:
        raise InvalidInputError("instruction", text[:40], f"longer than {MAX_TEXT} characters")
    low = " ".join(text.lower().translate(_QUOTES).split())
    if not low:
        return Constraints()
    spans = _Spans()
    parts: list[tuple[int, str, str]] = []
    if _numeric(fields, "price"):
        parts += _price(low, spans)
    alternatives: list[tuple[int, str, str]] = []
    if _numeric(fields, "year"):
        bounds, alternatives = _year(low, spans)
        parts += bounds
    else:  # years and decades are still read, so their digits are never taken for anything else
        _year(low, spans)
    vocab = categories if isinstance(categories, CategoryVocabulary) else CategoryVocabulary(categories)
    named: dict[str, bool] = {}
    for _, name, negated in vocab.find(low, spans):
        named[name] = named.get(name, True) and not negated  # a negated mention wins
    clauses = [p for _, p, _ in sorted(parts)]
    phrases = [w for _, _, w in sorted(parts)]
    if alternatives:
        alternatives = sorted(dict((p, (pos, p, w)) for pos, p, w in alternatives).values())
        either = [p for _, p, _ in alternatives]
        clauses.append(either[0] if len(either) == 1 else " or ".join(f"({p})" for p in either))
        first = min(pos for pos, _, _ in alternatives)
        at = sum(1 for pos, _, _ in parts if pos < first)
        phrases.insert(at, " or ".join(w for _, _, w in alternatives).replace(" or from the ", " or the ")
                       .replace(" or from ", " or "))
    flt = parse_filter(" and ".join(f"({c})" if " or " in c and len(clauses) > 1 else c for c in clauses)
                       ) if clauses else None
    return Constraints(flt, tuple(n for n, keep in named.items() if keep), tuple(dict.fromkeys(phrases)))
