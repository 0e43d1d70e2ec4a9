"""Item validation: what makes a :class:`~recsieve.types.Item` acceptable, and its normal form.

:func:`check_item` is the one gate every item passes, whether it comes from a file
(:func:`recsieve.items_io.item_from_record`) or from Python (:meth:`recsieve.catalog.Catalog.upsert`).
Metadata keys must be names a filter can use (:data:`NAME_RE`, not a keyword, not one of
:data:`RESERVED_FIELDS`); metadata values are finite scalars that fit in 64 bits.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError
from recsieve.types import Item, Scalar

__all__ = ["MAX_TEXT_CHARS", "MAX_ID_CHARS", "NAME_RE", "RESERVED_FIELDS", "check_item"]

#: Most characters of text one item may hold (title, description, categories, attributes,
#: string metadata together, and its rendered text).
MAX_TEXT_CHARS = 100_000
#: Longest item id.
MAX_ID_CHARS = 512
#: The top-level fields of an item record; not usable as attribute or metadata keys.
RESERVED_FIELDS = frozenset({"id", "title", "description", "categories", "attributes", "metadata"})
#: A bare field name: a metadata key, or a field a rendering template references.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_INT64 = (-(2**63), 2**63 - 1)


def _is_name(key: str) -> bool:
    return bool(NAME_RE.fullmatch(key)) and not keyword.iskeyword(key) and key not in ("true", "false")


def _scalar(value: Any, fld: str) -> Scalar:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidInputError(fld, value, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(fld, value, "numbers must be finite")
        return value
    if isinstance(value, (list, tuple, dict, set)):
        raise InvalidInputError(fld, value, "metadata values must be scalars (str, int, float, bool), not nested")
    raise InvalidInputError(fld, value, f"metadata values must be str, int, float or bool, not {type(value).__name__}")


def check_item(item: Any, where: str = "item.") -> Item:
    """Validate ``item`` and return a normalised copy (tuple categories, fresh dicts).

    ``where`` prefixes field names in errors (``"items[3]."`` or ``"items.csv line 4: "``).
    Raises :class:`InvalidInputError` naming the field on: an id that is not a non-empty
    string without surrounding spaces (at most :data:`MAX_ID_CHARS`); non-string text
    fields; categories that are not a list of non-empty strings; attributes that are not a
    string -> string map; metadata keys that are not identifiers usable in filters (or are
    reserved: ``id``, ``title``, ...), nested or non-finite metadata values; a key in both
    attributes and metadata; no text at all; more than :data:`MAX_TEXT_CHARS` of text.
    """
    if not isinstance(item, Item):
        raise InvalidInputError(where.rstrip(".: ") or "item", type(item).__name__, "expected a recsieve.Item")
    item_id = item.id
    if not isinstance(item_id, str):
        raise InvalidInputError(f"{where}id", item_id, "must be a string (quote numeric ids)")
    if not item_id or item_id != item_id.strip():
        raise InvalidInputError(f"{where}id", item_id, "must be non-empty, without leading or trailing spaces")
    if len(item_id) > MAX_ID_CHARS:
        raise InvalidInputError(f"{where}id", item_id, f"longer than {MAX_ID_CHARS} characters")
    for name in ("title", "description"):
        if not isinstance(getattr(item, name), str):
            raise InvalidInputError(f"{where}{name}", getattr(item, name), "must be a string")
    cats = item.categories
    if isinstance(cats, str) or not isinstance(cats, (list, tuple)):
        raise InvalidInputError(f"{where}categories", cats, "must be a list of strings")
    for i, c in enumerate(cats):
        if not isinstance(c, str) or not c.strip():
            raise InvalidInputError(f"{where}categories[{i}]", c, "must be a non-empty string")
    if not isinstance(item.attributes, Mapping):
        raise InvalidInputError(f"{where}attributes", item.attributes, "must be a mapping of strings to strings")
    for key, value in item.attributes.items():
        if not isinstance(key, str) or not key.strip() or key in RESERVED_FIELDS:
            raise InvalidInputError(f"{where}attributes", key, "keys must be non-empty strings, not a reserved name")
        if not isinstance(value, str):
            raise InvalidInputError(
                f"{where}attributes.{key}", value, "attribute values are text; put numbers in metadata"
            )
    if not isinstance(item.metadata, Mapping):
        raise InvalidInputError(f"{where}metadata", item.metadata, "must be a mapping of names to scalars")
    metadata: dict[str, Scalar] = {}
    for key, value in item.metadata.items():
        if not isinstance(key, str) or not _is_name(key) or key in RESERVED_FIELDS:
            raise InvalidInputError(
                f"{where}metadata", key, "keys must be identifiers usable in filters (letters, digits, _), "
                "not keywords or reserved names"
            )
        if key in item.attributes:
            raise InvalidInputError(f"{where}metadata.{key}", key, "is both an attribute and a metadata key")
        metadata[key] = _scalar(value, f"{where}metadata.{key}")
    size = len(item.title) + len(item.description) + sum(map(len, cats))
    size += sum(len(k) + len(v) for k, v in item.attributes.items())
    size += sum(len(v) for v in metadata.values() if isinstance(v, str))
    if size > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{where}text", size, f"more than {MAX_TEXT_CHARS} characters of text")
    has_text = (
        item.title.strip() or item.description.strip() or cats or any(v.strip() for v in item.attributes.values())
    )
    if not has_text:
        raise InvalidInputError(
            f"{where}text", item_id, "item has no text: give a title, description, categories or attributes"
        )
    return Item(
        id=item_id,
        title=item.title,
        description=item.description,
        categories=tuple(cats),
        attributes=dict(item.attributes),
        metadata=metadata,
    )
