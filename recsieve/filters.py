"""Metadata filter expressions, parsed (never executed).

The language is a small subset of Python expression syntax::

    price < 30 and category == "books"
    category in ("books", "music") and not (year < 1990)
    in_stock == true

Comparisons are ``== != < <= > >=`` between a field and a literal (string, number,
boolean), ``in`` / ``not in`` against a tuple or list of literals, combined with ``and``,
``or``, ``not`` and parentheses. A field an item lacks is *unknown*: a comparison on it is
neither true nor false, as in SQL, so ``not (x == 1)`` does not match items without ``x``.
Each filter evaluates in Python (:meth:`Filter.matches`) and renders to SQL
(:meth:`Filter.to_sql`) for indexes that push filters down; both follow the same logic.
"""

from __future__ import annotations

import ast
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsieve.errors import FilterSyntaxError

__all__ = ["Filter", "parse_filter"]

_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_SQL_OPS = {"==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
#: ``ast.parse`` is not thread-safe on CPython 3.11: the AST constructor's recursion counter is
#: shared by the interpreter, so two threads converting trees at once can raise
#: ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905; seen in
#: tests/test_soak.py with readers and writers filtering concurrently). Parses take this lock.
_PARSE_LOCK = threading.Lock()
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_LEN = 10_000

Literal = str | int | float | bool
# Node shapes: ("and", [nodes]), ("or", [nodes]), ("not", node),
# ("cmp", field, op, literal), ("in", field, (literals...), negated)
Node = tuple


def _literal(node: ast.AST, text: str) -> Literal:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise FilterSyntaxError("filter", text, "literals must be finite")
        return node.value
    if isinstance(node, ast.Name) and node.id in ("true", "false", "True", "False"):
        return node.id.lower() == "true"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand, text)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    raise FilterSyntaxError("filter", text, f"expected a literal, got {ast.unparse(node)!r}")


def _field(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name) and node.id not in ("true", "false", "True", "False"):
        return node.id
    return None


def _convert(node: ast.AST, text: str) -> Node:
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        return (kind, [_convert(v, text) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ("not", _convert(node.operand, text))
    if isinstance(node, ast.Compare):
        parts: list[Node] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            parts.append(_compare(left, op, right, text))
            left = right
        return parts[0] if len(parts) == 1 else ("and", parts)
    raise FilterSyntaxError(
        "filter", text, f"unsupported expression {ast.unparse(node)!r}; use comparisons joined by and/or/not"
    )


def _compare(left: ast.AST, op: ast.cmpop, right: ast.AST, text: str) -> Node:
    if isinstance(op, (ast.In, ast.NotIn)):
        name = _field(left)
        if name is None or not isinstance(right, (ast.Tuple, ast.List, ast.Set)):
            raise FilterSyntaxError("filter", text, "'in' needs a field on the left and a list of literals")
        values = tuple(_literal(v, text) for v in right.elts)
        return ("in", name, values, isinstance(op, ast.NotIn))
    if type(op) not in _OPS:
        raise FilterSyntaxError("filter", text, f"unsupported operator {type(op).__name__}")
    sym = _OPS[type(op)]
    lname, rname = _field(left), _field(right)
    if lname is not None and rname is None:
        return ("cmp", lname, sym, _literal(right, text))
    if rname is not None and lname is None:
        return ("cmp", rname, _FLIP[sym], _literal(left, text))
    raise FilterSyntaxError("filter", text, "each comparison needs exactly one field and one literal")


def _cmp(value: Any, op: str, lit: Literal) -> bool | None:
    if value is None:
        return None
    num = (int, float)
    if isinstance(value, bool) or isinstance(lit, bool):
        if not (isinstance(value, bool) and isinstance(lit, bool)):
            return None
    elif isinstance(value, num) != isinstance(lit, num):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if op == "==":
        return value == lit
    if op == "!=":
        return value != lit
    if op == "<":
        return value < lit
    if op == "<=":
        return value <= lit
    if op == ">":
        return value > lit
    return value >= lit


def _eval(node: Node, meta: Mapping[str, Any]) -> bool | None:
    kind = node[0]
    if kind == "cmp":
        return _cmp(meta.get(node[1]), node[2], node[3])
    if kind == "in":
        results = [_cmp(meta.get(node[1]), "==", v) for v in node[2]]
        if any(r is True for r in results):
            hit: bool | None = True
        elif any(r is None for r in results) or not results and meta.get(node[1]) is None:
            hit = None
        else:
            hit = False
        return (None if hit is None else not hit) if node[3] else hit
    if kind == "not":
        inner = _eval(node[1], meta)
        return None if inner is None else not inner
    values = [_eval(n, meta) for n in node[1]]
    if kind == "and":
        if any(v is False for v in values):
            return False
        return None if any(v is None for v in values) else True
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def _sql_literal(value: Literal) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + value.replace("'", "''") + "'"


def _sql(node: Node) -> str:
    kind = node[0]
    if kind == "cmp":
        return f"(`{node[1]}` {_SQL_OPS[node[2]]} {_sql_literal(node[3])})"
    if kind == "in":
        if not node[2]:
            return "FALSE" if not node[3] else "TRUE"
        values = ", ".join(_sql_literal(v) for v in node[2])
        return f"(`{node[1]}` {'NOT IN' if node[3] else 'IN'} ({values}))"
    if kind == "not":
        return f"(NOT {_sql(node[1])})"
    joiner = " AND " if kind == "and" else " OR "
    return "(" + joiner.join(_sql(n) for n in node[1]) + ")"


def _fields(node: Node, out: set[str]) -> None:
    if node[0] in ("cmp", "in"):
        out.add(node[1])
    elif node[0] == "not":
        _fields(node[1], out)
    else:
        for n in node[1]:
            _fields(n, out)


@dataclass(frozen=True)
class Filter:
    """A parsed filter expression. Build it with :func:`parse_filter`."""

    text: str
    tree: Node

    @property
    def fields(self) -> frozenset[str]:
        """The metadata fields the filter reads."""
        out: set[str] = set()
        _fields(self.tree, out)
        return frozenset(out)

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """Whether an item with this metadata passes (unknown counts as not passing)."""
        return _eval(self.tree, metadata) is True

    def to_sql(self) -> str:
        """The filter as a SQL boolean expression (backtick-quoted fields)."""
        return _sql(self.tree)

    def __str__(self) -> str:
        return self.text


def parse_filter(expr: str | Mapping[str, Any] | Filter | None) -> Filter | None:
    """Parse a filter expression; a mapping means equality on every key (``{"category": "books"}``).

    >>> f = parse_filter('price < 30 and category == "books"')
    >>> f.matches({"price": 12.5, "category": "books"}), f.matches({"price": 40, "category": "books"})
    (True, False)
    >>> f.to_sql()
    "((`price` < 30) AND (`category` = 'books'))"
    """
    if expr is None or isinstance(expr, Filter):
        return expr
    if isinstance(expr, Mapping):
        if not expr:
            return None
        parts = []
        for key, value in expr.items():
            if not isinstance(key, str) or not _FIELD_RE.match(key):
                raise FilterSyntaxError("filter", key, "field names must be identifiers")
            if isinstance(value, (list, tuple, set)):
                parts.append(("in", key, tuple(_literal(ast.Constant(v), key) for v in value), False))
            else:
                parts.append(("cmp", key, "==", _literal(ast.Constant(value), key)))
        text = " and ".join(
            f"{k} in {tuple(v)!r}" if isinstance(v, (list, tuple, set)) else f"{k} == {v!r}" for k, v in expr.items()
        )
        return Filter(text, parts[0] if len(parts) == 1 else ("and", parts))
    if not isinstance(expr, str):
        raise FilterSyntaxError("filter", expr, "must be a string expression or a mapping")
    text = expr.strip()
    if not text:
        raise FilterSyntaxError("filter", expr, "empty filter expression")
    if len(text) > _MAX_LEN:
        raise FilterSyntaxError("filter", text[:40], f"longer than {_MAX_LEN} characters")
    try:
        with _PARSE_LOCK:
            tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise FilterSyntaxError("filter", text, f"syntax error at column {exc.offset}") from None
    except (ValueError, RecursionError, MemoryError):
        raise FilterSyntaxError("filter", text, "cannot parse") from None
    return Filter(text, _convert(tree.body, text))
