"""No import cycle among the modules of `src/amygdala`, counting imports inside functions.

The graph is built with `ast` from the source, not from what an interpreter happened to
load, so an import that only runs inside a function (the usual way a cycle is hidden)
counts like one at the top. The rules:

* `import amygdala.a.b` is an import of `amygdala.a.b`;
* `from amygdala.a import b` is an import of the submodule `amygdala.a.b` only when `b`
  is a module, else of `amygdala.a` (the package itself, for a name it defines);
  relative imports are resolved the same way;
* imports under `if TYPE_CHECKING:` are left out: they never run.

Dynamic imports (`importlib.import_module(name)` with a computed name: the lazy names of
`amygdala/__init__.py`, the subcommands of `amygdala.cli`) are not statements and are not
counted. The cycle finder itself is checked on a small package written here, whose
cycles are known.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `where` (`path:line`)."""

    source: str
    target: str
    where: str


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `src`: dotted name → file (`pkg/__init__.py` → `pkg`)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` (their `else` stays)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is one of `modules`."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path], src: Path) -> list[Edge]:
    """The imports of `module` that land in `modules` (see the module docstring)."""
    path = modules[module]
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges = []
    for node in _runtime_nodes(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            owner = _owner(target, modules)
            if owner is not None and owner != module:
                edges.append(Edge(module, owner, f"{path.relative_to(src)}:{node.lineno}"))
    return sorted(edges, key=lambda e: (e.target, e.where))


def import_graph(src: Path, package: str) -> dict[str, list[Edge]]:
    """Module → its imports within the package (first import of each target kept)."""
    modules = module_names(src, package)
    graph: dict[str, list[Edge]] = {}
    for module in modules:
        first: dict[str, Edge] = {}
        for edge in imports_of(module, modules, src):
            first.setdefault(edge.target, edge)
        graph[module] = sorted(first.values(), key=lambda e: e.target)
    return graph


def find_cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One cycle per strongly connected component that has one (Tarjan), as its edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth ≤ number of modules (~70)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph.get(v, []):
            w = edge.target
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, component) for component in sorted(components)]


def _cycle_in(graph: dict[str, list[Edge]], component: list[str]) -> list[Edge]:
    """A shortest cycle through the first module of a strongly connected component (BFS)."""
    start, members = component[0], set(component)
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for edge in graph.get(v, []):
                if edge.target not in members or edge.target in came:
                    continue
                came[edge.target] = edge
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")  # cannot happen


def describe(cycle: list[Edge]) -> str:
    """`a (a.py:3) → b (b.py:7) → a`."""
    return " → ".join(f"{e.source} ({e.where})" for e in cycle) + f" → {cycle[0].source}"


# -- the package ----------------------------------------------------------------------------


def test_amygdala_has_no_import_cycle() -> None:
    graph = import_graph(SRC, "amygdala")
    assert len(graph) > 50, sorted(graph)  # every module was found
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c) for c in cycles)


def test_the_graph_sees_imports_inside_functions() -> None:
    """A known import made only inside a function is an edge (the report's renderer
    reads the artifact lazily): without it, the test above could not fail."""
    graph = import_graph(SRC, "amygdala")
    targets = {e.target for e in graph["amygdala.report"]}
    assert "amygdala.artifact" in targets
    assert "amygdala.activations" in targets
    assert "amygdala.train" not in targets


# -- the cycle finder, on a package whose cycles are known ----------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_through_a_function_import_is_found_and_named(tmp_path: Path) -> None:
    src = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    from pkg.c import thing\n    return thing\n",
            "pkg/c.py": "import os\n\n\ndef thing():\n    import pkg.a\n",
            "pkg/d.py": "from pkg import a\n",  # into the cycle, not part of it
        },
    )
    cycles = find_cycles(import_graph(src, "pkg"))
    assert [describe(c) for c in cycles] == [
        "pkg.a (pkg/a.py:1) → pkg.b (pkg/b.py:2) → pkg.c (pkg/c.py:5) → pkg.a"
    ]


def test_from_package_import_submodule_counts_the_submodule_only(tmp_path: Path) -> None:
    src = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import helper\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/helper.py": "from pkg import VERSION, sub\n",  # the package: a name
            "pkg/sub/other.py": "from . import helper\nfrom .. import sub\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert [e.target for e in graph["pkg"]] == ["pkg.sub.helper"]
    assert [e.target for e in graph["pkg.sub.helper"]] == ["pkg", "pkg.sub"]
    assert [e.target for e in graph["pkg.sub.other"]] == ["pkg.sub", "pkg.sub.helper"]
    assert [describe(c) for c in find_cycles(graph)] == [
        "pkg (pkg/__init__.py:1) → pkg.sub.helper (pkg/sub/helper.py:1) → pkg"
    ]


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    src = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg import b\nelse:\n    import pkg.c\n",
            "pkg/b.py": "import pkg.a\n",
            "pkg/c.py": "",
        },
    )
    graph = import_graph(src, "pkg")
    assert [e.target for e in graph["pkg.a"]] == ["pkg.c"]
    assert find_cycles(graph) == []
