"""Imports point down only, siblings never import each other, and no modules import each other.

Floors (DESIGN.md, "Layering"): core 0, serving 1, policies and budgets 2
(siblings), router 3. Every import counts: at module level, under
``if TYPE_CHECKING:``, and inside functions; relative imports are resolved.
Only ``import`` statements are seen, not ``importlib.import_module`` strings.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"core": 0, "serving": 1, "policies": 2, "budgets": 2, "router": 3}
SIBLINGS = frozenset({"policies", "budgets"})

# module --> {imported module --> where the first such import is}
Graph = dict[str, dict[str, str]]


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the floored packages under ``root``, by dotted name (a package by its own)."""
    found: dict[str, Path] = {}
    for room in FLOORS:
        for path in sorted((root / room).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` names, or the nearest package holding it; None outside the floored packages."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement may load, relative ones made absolute."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        kept = len(package) - (node.level - 1)
        if kept < 1:
            raise ValueError(f"{module}: relative import beyond the top-level package")
        base = ".".join([*package[:kept], *([base] if base else [])])
    for alias in node.names:
        # `from pkg import name`: a submodule if one is called that, else an attribute of pkg.
        yield f"{base}.{alias.name}"


def import_graph(root: Path) -> Graph:
    """Imports among the floored packages under ``root``, wherever in a file they are."""
    modules = _modules(root)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for imported in _imported(node, name, is_package):
                target = _known(imported, modules)
                if target is not None and target != name:
                    graph[name].setdefault(target, f"{path.relative_to(root)}:{node.lineno}")
    return graph


def layer_violations(graph: Graph) -> list[str]:
    """``module -> module`` for each import of a higher floor or of a sibling room."""
    found = []
    for source, targets in sorted(graph.items()):
        room = source.partition(".")[0]
        for target, where in sorted(targets.items()):
            other = target.partition(".")[0]
            upward = FLOORS[other] > FLOORS[room]
            sibling = room != other and {room, other} <= SIBLINGS
            if upward or sibling:
                found.append(f"{source} -> {target}  ({where})")
    return found


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(graph: Graph, component: list[str]) -> str:
    """A cycle as its members and every import between them."""
    members = set(component)
    edges = [f"{s} -> {t}  ({graph[s][t]})" for s in component for t in sorted(graph[s]) if t in members]
    return f"{', '.join(component)}:\n    " + "\n    ".join(edges)


def test_the_gateway_imports_point_down_only() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 50 and "budgets.ledger" in graph, "the walker found too few modules to mean anything"
    violations = layer_violations(graph)
    assert not violations, "imports of a higher floor or a sibling room:\n" + "\n".join(violations)


def test_no_modules_import_each_other() -> None:
    graph = import_graph(ROOT)
    found = cycles(graph)
    assert not found, "modules that import each other:\n" + "\n".join(describe(graph, c) for c in found)


_SCRATCH = {
    "core/__init__.py": "",
    "core/base.py": "",
    # An upward import hidden in a function body.
    "core/late.py": "def f():\n    from router import top\n    return top\n",
    "serving/__init__.py": "",
    # A relative cycle: `from . import` and `from .name import`.
    "serving/one.py": "from . import two\n",
    "serving/two.py": "from .one import thing\n",
    # Upward at module level, as `import a.b`.
    "serving/up.py": "import router.top\n",
    # Siblings, under TYPE_CHECKING.
    "policies/__init__.py": "",
    "policies/pol.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from budgets.bud import Row\n",
    "budgets/__init__.py": "",
    "budgets/bud.py": "import core.base\nimport json\n",
    "router/__init__.py": "",
    "router/top.py": "from policies import pol\nfrom serving.one import thing\n",
    # `from .. import` in a subpackage's __init__, and a three-module cycle through it.
    "router/sub/__init__.py": "from .. import top\nfrom router.sub import deep\n",
    "router/sub/deep.py": "from router.sub.deeper import x\n",
    "router/sub/deeper.py": "from router import sub\n",
}


def test_the_checks_catch_each_kind_of_violation(tmp_path: Path) -> None:
    for name, text in _SCRATCH.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    graph = import_graph(tmp_path)
    assert graph["router.sub"] == {"router.top": "router/sub/__init__.py:1", "router.sub.deep": "router/sub/__init__.py:2"}
    assert [v.split("  ")[0] for v in layer_violations(graph)] == [
        "core.late -> router.top",
        "policies.pol -> budgets.bud",
        "serving.up -> router.top",
    ]
    assert "(core/late.py:2)" in layer_violations(graph)[0]
    assert cycles(graph) == [["router.sub", "router.sub.deep", "router.sub.deeper"], ["serving.one", "serving.two"]]
    assert describe(graph, ["serving.one", "serving.two"]) == (
        "serving.one, serving.two:\n    serving.one -> serving.two  (serving/one.py:1)\n"
        "    serving.two -> serving.one  (serving/two.py:1)"
    )
