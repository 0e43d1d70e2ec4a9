"""Item text: how an item becomes the text that is embedded, and that text's stable hash.

A :class:`Template` (default :data:`DEFAULT_TEMPLATE`) names the item fields to render;
:func:`render` applies one to an item; :func:`content_hash` keys embeddings by the rendered
text, so an item whose text did not change is never embedded again.
"""

from __future__ import annotations

import hashlib
import string

from recsieve.errors import InvalidInputError
from recsieve.types import Item
from recsieve.validation import NAME_RE

__all__ = ["DEFAULT_TEMPLATE", "Template", "render", "content_hash"]

#: How an item becomes the text that is embedded (see :class:`Template`).
DEFAULT_TEMPLATE = "{title}. {categories}. {description}. {attributes}"

_SEPARATORS = " \t.,;:|-–—/"


class Template:
    """A validated rendering template such as ``"{title}. {categories}. {description}"``.

    Fields are referenced by bare name only: ``title``, ``description``, ``categories``
    (joined with ``", "``), ``attributes`` (all of them, ``"key: value; key: value"``),
    ``id``, or any single attribute or metadata key. Conversions (``{x!r}``), format specs
    (``{x:>10}``) and attribute or index access (``{x.__class__}``, ``{x[0]}``) are rejected
    when the template is built; it is rendered by substitution, never ``str.format``.

    Empty parts collapse: a field that renders empty is dropped together with the literal
    text before it (its separator or label), and when nothing has been written yet the
    literal after it loses its leading separators, so ``"{title}. {categories}. {x}"`` with
    no categories gives ``"Title. x"``, not ``"Title. . x"``. A literal that starts with a
    period right after a value ending in ``.``, ``!`` or ``?`` drops that period. Whitespace
    is collapsed to single spaces. Nothing is truncated.

    >>> Template("{title} ({year})").render(Item("a", title="Heat", metadata={"year": 1995}))
    'Heat (1995)'
    """

    def __init__(self, source: str = DEFAULT_TEMPLATE) -> None:
        if not isinstance(source, str):
            raise InvalidInputError("template", source, "must be a string")
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise InvalidInputError("template", source, f"not a valid template: {exc}") from None
        literals: list[str] = []
        names: list[str] = []
        pending = ""
        for literal, name, spec, conversion in parsed:
            pending += literal
            if name is None:
                continue
            if not NAME_RE.fullmatch(name):
                raise InvalidInputError(
                    "template", source, f"field {{{name}}} must be a bare name such as {{title}}"
                )
            if conversion is not None or spec:
                raise InvalidInputError(
                    "template", source, f"field {{{name}}} may not carry a conversion or format spec"
                )
            literals.append(pending)
            names.append(name)
            pending = ""
        if not names:
            raise InvalidInputError("template", source, "must reference at least one field, e.g. {title}")
        self.source = source
        self.fields: tuple[str, ...] = tuple(names)
        self._literals = tuple(literals)
        self._tail = pending

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def render(self, item: Item) -> str:
        """The text of ``item`` under this template (whitespace collapsed, empty parts dropped)."""
        out: list[str] = []
        dropped = False
        for literal, name in zip(self._literals, self.fields, strict=True):
            value = " ".join(_field_text(item, name).split())
            if not value:
                dropped = True
                continue
            if not out and dropped:
                literal = literal.lstrip(_SEPARATORS)
            out.append(_join_literal(out, literal))
            out.append(value)
        if out:
            out.append(_join_literal(out, self._tail))
        return " ".join("".join(out).split())


def _join_literal(out: list[str], literal: str) -> str:
    if out and literal.startswith(".") and out[-1].endswith((".", "!", "?")):
        return literal[1:]
    return literal


def _field_text(item: Item, name: str) -> str:
    if name == "title":
        return item.title
    if name == "description":
        return item.description
    if name == "id":
        return item.id
    if name == "categories":
        return ", ".join(c.strip() for c in item.categories if c.strip())
    if name == "attributes":
        return "; ".join(f"{k}: {v.strip()}" for k, v in item.attributes.items() if v.strip())
    if name in item.attributes:
        return item.attributes[name]
    if name in item.metadata:
        return str(item.metadata[name])
    return ""


def render(item: Item, template: str | Template = DEFAULT_TEMPLATE) -> str:
    """The text of ``item`` that gets embedded, under ``template`` (see :class:`Template`).

    >>> render(Item("a", title="Dune", description="Desert epic.", categories=("books",)))
    'Dune. books. Desert epic.'
    """
    if not isinstance(template, Template):
        template = Template(template)
    return template.render(item)


def content_hash(text: str) -> str:
    """sha256 hex digest of ``text`` in UTF-8: stable across processes and machines.

    >>> content_hash("")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
