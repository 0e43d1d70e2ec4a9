"""The house's rules, read from the source with ``ast`` (nothing of recsieve is imported).

- no import cycles among ``recsieve.*`` modules — a lazy import inside a function counts (it only
  moves the circle to run time); an import under ``if TYPE_CHECKING:`` does not;
- no import of another module's underscored name, and no import of a private module
  (``recsieve.indexes._metadata``) from outside its package;
- no module over ``MAX_LINES`` lines;
- arrows point down (DESIGN.md): serving code (everything but ``recsieve.training``,
  ``recsieve.evaluation``, ``recsieve.bench``, ``recsieve.cli`` and the lazy facade
  ``recsieve/__init__.py``) never imports training, and no layer imports one above it.

How an import is read: ``import a.b.c`` and ``from a.b import c`` name module ``a.b.c`` when it
exists, else ``c`` is a name in ``a.b``; relative imports are resolved against the importing
module's package. Importing ``recsieve.x.y`` also runs ``recsieve/x/__init__.py``: that is an edge
to the package too (marked "runs the package"), except to the importer's own packages, which are
already running. ``importlib.import_module`` (the facade's lazy table) is not an import here.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "recsieve"
MAX_LINES = 600

#: Layers, lowest first: a module may import its own layer or a lower one. Modules (of the
#: package) not listed are serving code, layer 0; the package's ``__init__`` is the public facade,
#: which re-exports every layer lazily, and belongs to none.
LAYERS = {"training": 1, "evaluation": 2, "bench": 2, "cli": 3}
LAYER_NAMES = {0: "serving", 1: "training", 2: "evaluation/bench", 3: "cli"}
#: Deprecated aliases of moved modules, kept for one release so old imports still work. Like the
#: package's ``__init__`` they belong to no layer, and no module of the package may import them
#: (:func:`test_nothing_imports_the_deprecated_aliases`), so no arrow goes through them.
ALIASES = {"recsieve.engine.train", "recsieve.engine.learn"}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of the package
    name: str | None  # ``from target import name`` where name is not a module
    line: int
    lazy: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``
    implicit: bool = False  # the package's __init__ runs because a submodule was imported

    def where(self, tree: Tree) -> str:
        tags = [t for t, on in (("in a function", self.lazy), ("runs the package", self.implicit),
                                ("TYPE_CHECKING", self.type_only)) if on]
        return f"{tree.path(self.importer)}:{self.line}" + (f" ({', '.join(tags)})" if tags else "")


@dataclass
class Tree:
    root: Path
    package: str
    files: dict[str, Path]  # module name -> file
    imports: list[Import]
    lines: dict[str, int]

    def path(self, module: str) -> str:
        return self.files[module].relative_to(self.root).as_posix()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def raw_imports(node: ast.AST, lazy: bool = False, type_only: bool = False):
    """(statement, lazy, type_only) for every import statement, module level or nested."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, lazy, type_only
        return
    if isinstance(node, ast.If) and is_type_checking(node.test):
        for stmt in node.body:
            yield from raw_imports(stmt, lazy, True)
        for stmt in node.orelse:
            yield from raw_imports(stmt, lazy, type_only)
        return
    lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    for child in ast.iter_child_nodes(node):
        yield from raw_imports(child, lazy, type_only)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.cache
def read_tree(root: Path = ROOT, package: str = PACKAGE) -> Tree:
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py")) if "__pycache__" not in p.parts}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    imports: list[Import] = []
    lines: dict[str, int] = {}
    for module, path in files.items():
        text = path.read_text(encoding="utf-8")
        lines[module] = len(text.splitlines())
        found: list[Import] = []
        for node, lazy, type_only in raw_imports(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name
                    while target and target not in files:  # ``import a.b.c`` of a name that is no module
                        target = target.rpartition(".")[0]
                    if target:
                        found.append(Import(module, target, None, node.lineno, lazy, type_only))
                continue
            source = resolve(module, module in packages, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in files:
                    found.append(Import(module, f"{source}.{alias.name}", None, node.lineno, lazy, type_only))
                elif source in files:
                    found.append(Import(module, source, alias.name, node.lineno, lazy, type_only))
        running = set(ancestors(module)) | {module}
        for imp in list(found):
            for pkg in ancestors(imp.target):
                if pkg in files and pkg not in running:
                    found.append(Import(module, pkg, None, imp.line, imp.lazy, imp.type_only, implicit=True))
        imports += found
    return Tree(root, package, files, imports, lines)


# -- the rules, each a function of a tree, so the self-test below can run them on a made-up one ----


def find_cycles(tree: Tree) -> list[str]:
    """One line per cycle: for every edge inside a strongly connected component, the shortest
    circle through it (circles found twice are listed once)."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in tree.imports:
        if not imp.type_only and imp.target != imp.importer:
            edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    components = strongly_connected(edges)
    seen: set[tuple[str, ...]] = set()
    out: list[str] = []
    for comp in components:
        for u in sorted(comp):
            for v in sorted(edges.get(u, {})):
                if v not in comp:
                    continue
                path = shortest_path(edges, v, u, comp)
                circle = [u, *path]  # u -> v -> ... -> u
                key = canonical(circle[:-1])
                if key in seen:
                    continue
                seen.add(key)
                steps = " -> ".join(
                    f"{a} [{edges[a][b].where(tree)}]" for a, b in zip(circle, circle[1:])
                )
                out.append(f"{steps} -> {circle[-1]}")
    return out


def strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    nodes = sorted(set(edges) | {v for targets in edges.values() for v in targets})

    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.add(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    result.append(comp)
    return result


def shortest_path(edges: dict[str, dict[str, Import]], start: str, goal: str, within: set[str]) -> list[str]:
    """Modules from ``start`` to ``goal`` (both included), by breadth-first search inside ``within``."""
    before: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for nxt in sorted(edges.get(node, {})):
            if nxt in within and nxt not in before:
                before[nxt] = node
                queue.append(nxt)
    path = [goal]
    while before[path[-1]] is not None:
        path.append(before[path[-1]])
    return path[::-1]


def canonical(circle: list[str]) -> tuple[str, ...]:
    i = circle.index(min(circle))
    return tuple(circle[i:] + circle[:i])


def is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def find_private_reaches(tree: Tree) -> list[str]:
    out = []
    for imp in tree.imports:
        if imp.implicit:
            continue
        if imp.name is not None and is_private(imp.name) and imp.target != imp.importer:
            out.append(f"{imp.where(tree)}: {imp.importer} imports {imp.target}.{imp.name}")
        parts = imp.target.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])
            if is_private(part) and not (imp.importer == owner or imp.importer.startswith(owner + ".")):
                out.append(f"{imp.where(tree)}: {imp.importer} imports private module {imp.target} "
                           f"from outside {owner}")
                break
    return sorted(set(out))


def find_long_modules(tree: Tree, limit: int = MAX_LINES) -> list[str]:
    return [f"{tree.path(m)}: {n} lines" for m, n in sorted(tree.lines.items()) if n > limit]


def layer(tree: Tree, module: str) -> int | None:
    if module == tree.package or module in ALIASES:
        return None
    first = module.split(".")[1]
    return LAYERS.get(first, 0)


def find_upward_imports(tree: Tree) -> list[str]:
    """Imports from a layer to a higher one (TYPE_CHECKING ones too: the knowledge still points up)."""
    out = []
    for imp in tree.imports:
        if imp.implicit:  # a package runs with its submodule: the same layer, already reported
            continue
        low, high = layer(tree, imp.importer), layer(tree, imp.target)
        if low is not None and high is not None and high > low:
            out.append(f"{imp.where(tree)}: {imp.importer} ({LAYER_NAMES[low]}) imports "
                       f"{imp.target} ({LAYER_NAMES[high]})")
    return sorted(set(out))


def report(title: str, items: list[str]) -> str:
    return f"{len(items)} {title}:\n  " + "\n  ".join(items)


# -- the package ------------------------------------------------------------------------------------


def test_the_package_is_read():
    tree = read_tree()
    assert "recsieve.engine.config" in tree.files and "recsieve.errors" in tree.files
    assert any(i.importer == "recsieve.engine.config" and i.target == "recsieve.errors" for i in tree.imports)


def test_no_import_cycles():
    cycles = find_cycles(read_tree())
    assert not cycles, report("import cycles (module [file:line of its import] -> ...)", cycles)


def test_no_reaching_into_private_names():
    reaches = find_private_reaches(read_tree())
    assert not reaches, report("imports of another module's underscored name", reaches)


def test_modules_are_at_most_600_lines():
    long = find_long_modules(read_tree())
    assert not long, report(f"modules over {MAX_LINES} lines", long)


def test_serving_code_never_imports_training_and_no_layer_imports_upward():
    upward = find_upward_imports(read_tree())
    assert not upward, report("upward imports (serving < training < evaluation/bench < cli)", upward)


def test_nothing_imports_the_deprecated_aliases():
    tree = read_tree()
    assert ALIASES <= set(tree.files), "an alias was removed: take it out of ALIASES too"
    users = sorted(f"{i.where(tree)}: {i.importer} imports {i.target}" for i in tree.imports
                   if i.target in ALIASES and i.importer != tree.package)
    assert not users, report("imports of deprecated aliases (import the new home instead)", users)


# -- the checker itself, on a made-up package --------------------------------------------------------


@pytest.fixture
def fake(tmp_path):
    files = {
        "pkg/__init__.py": "import importlib\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    from pkg.training.fit import fit\n",
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "def thing():\n    from pkg import a  # lazy, still a circle\n    return a\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import D\n"
                    "else:\n    import os\nfrom pkg.sub import _hidden\nfrom pkg.sub._priv import x\n",
        "pkg/d.py": "from . import c\nfrom .sub import _priv\nimport pkg.training.fit\n",
        "pkg/sub/__init__.py": "from pkg.sub.mod import _hidden\nfrom ._priv import x\nimport pkg.e\n",
        "pkg/sub/mod.py": "_hidden = 1\n",
        "pkg/sub/_priv.py": "x = 1\n",
        "pkg/e.py": "from pkg.sub.mod import _hidden as h\n",
        "pkg/training/__init__.py": "",
        "pkg/training/fit.py": "def fit():\n    pass\n" + "# filler\n" * 700,
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return read_tree(tmp_path, "pkg")


def test_checker_finds_lazy_cycles_but_not_type_checking_ones(fake):
    cycles = find_cycles(fake)
    assert any("pkg.a [pkg/a.py:1] -> pkg.b [pkg/b.py:2 (in a function)] -> pkg.a" == c for c in cycles), cycles
    # pkg.c -> pkg.d is TYPE_CHECKING only: d -> c is no circle
    assert not any("pkg.c [" in c and "pkg.d [" in c for c in cycles), cycles
    # importing pkg.sub.mod runs pkg/sub/__init__.py, which imports pkg.e, which imports pkg.sub.mod
    assert any("pkg.e [pkg/e.py:1 (runs the package)] -> pkg.sub" in c for c in cycles), cycles


def test_checker_finds_private_reaches(fake):
    reaches = find_private_reaches(fake)
    text = "\n".join(reaches)
    assert "pkg.c imports pkg.sub._hidden" in text  # a name, through the package
    assert "pkg.c imports private module pkg.sub._priv from outside pkg.sub" in text
    assert "pkg.d imports private module pkg.sub._priv" in text  # relative import resolved
    assert "pkg.e imports pkg.sub.mod._hidden" in text
    assert "pkg.sub imports private module" not in text  # inside its own package: fine
    assert "pkg.sub imports pkg.sub.mod._hidden" in text  # but a sibling's underscored name is not
    assert len(reaches) == 5, reaches


def test_checker_finds_long_modules_and_upward_imports(fake):
    assert find_long_modules(fake) == ["pkg/training/fit.py: 702 lines"]
    upward = find_upward_imports(fake)
    assert len(upward) == 1, upward  # pkg.d imports pkg.training.fit
    assert all(u.startswith("pkg/d.py:3") for u in upward), upward  # the facade's TYPE_CHECKING import is fine
