"""No import cycle inside jaxrl_lm (jaxrl_lm.envs included).

Every `import` / `from ... import` of a jaxrl_lm module counts, at module
level or inside a function (a lazy import still ties the two modules
together), except under `if TYPE_CHECKING:`. An import of a package counts as
an edge to its __init__; `from pkg import name` is an edge to pkg.name when
that is a module, else to pkg. A cycle is a strongly connected component of
more than one module (or a module importing itself).

    python tests/test_imports.py     # prints the cycles, if any
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"jaxrl_lm": ROOT / "jaxrl_lm", "jaxrl_lm.envs": ROOT / "envs"}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "jaxrl_lm" and name.startswith("jaxrl_lm.envs"):
                continue
            out[name] = path
    return out


def _imports(tree: ast.AST, name: str, is_package: bool):
    """(module, imported name or None) for every import outside TYPE_CHECKING."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for module, attr in _imports(tree, name, path.name == "__init__.py"):
            target = f"{module}.{attr}" if attr and f"{module}.{attr}" in mods else module
            if target in mods:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert "jaxrl_lm.train.rl" in import_graph()["jaxrl_lm.train.trainer"]


if __name__ == "__main__":
    found = cycles(import_graph())
    print("\n".join(" <-> ".join(c) for c in found) or "no import cycles")
    sys.exit(1 if found else 0)
