"""The house (issue 25): mmbench's packages stand on floors, and an import never climbs.

Every `import` in `mmbench/` counts, the lazy ones inside functions too (a lazy import is still a
dependency; laziness only hides a circle until run time). A module may import its own floor or a lower
one, never a higher one; the module graph has no circle; a paper's package imports no other paper's.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mmbench"

# Lowest first. A new top-level module or package must be placed here (the test says so).
FLOORS = [
    {"mmbench", "mmbench.errors", "mmbench.registry", "mmbench.paths"},
    {"mmbench.data", "mmbench.metrics", "mmbench.recipes", "mmbench.results"},
    {"mmbench.encoders", "mmbench.engine", "mmbench.report", "mmbench.plan_cache"},
    {"mmbench.papers"},
    {"mmbench.launchers", "mmbench.rehearsal", "mmbench.regress", "mmbench.reproduce", "mmbench.bench"},
    {"mmbench.cli", "mmbench.__main__"},
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str:
    """The mmbench module an imported name lives in (`mmbench.x.y.func` → `mmbench.x.y`)."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            edges[name] |= {_owner(t, modules) for t in targets if t == "mmbench" or t.startswith("mmbench.")} - {name}
    return edges


def _floor_of(name: str) -> tuple[int, str]:
    """(floor, unit): the unit is the top-level module/package, or `mmbench.papers.<paper>`."""
    parts = name.split(".")
    top = ".".join(parts[:2])
    unit = ".".join(parts[:3]) if top == "mmbench.papers" and len(parts) > 2 else top
    for level, names in enumerate(FLOORS):
        if top in names:
            return level, unit
    raise AssertionError(f"{name}: its package {top} has no floor in tests/shared/test_import_graph.py FLOORS; place it")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = itertools.count()

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_climbs_to_a_higher_floor():
    modules = _modules()
    climbs = []
    for name, targets in _edges(modules).items():
        level, unit = _floor_of(name)
        for target in targets:
            target_level, target_unit = _floor_of(target)
            if target_level > level:
                climbs.append(f"{name} (floor {level}) imports {target} (floor {target_level})")
            elif unit.startswith("mmbench.papers.") and target_unit.startswith("mmbench.papers.") and unit != target_unit:
                climbs.append(f"{name} imports another paper's package {target}")
    assert not climbs, "\n".join(sorted(climbs))


def test_the_module_graph_has_no_circle():
    cycles = _cycles(_edges(_modules()))
    assert not cycles, "import circles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_the_graph_walker_sees_lazy_imports_and_circles():
    """The walker itself can fail: a lazy import inside a function is an edge, and a circle is found."""
    modules = _modules()
    edges = _edges(modules)
    assert "mmbench.registry" in edges["mmbench.engine.trainer"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _floor_of("mmbench.papers.itm.model") == (3, "mmbench.papers.itm")
