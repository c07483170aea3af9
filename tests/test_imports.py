"""Imports inside ``immuno`` point one way: no module imports, at its top or inside a
function, a module that imports it back (directly or through others)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "immuno"


def _graph() -> dict[str, set[str]]:
    """``{module: modules of immuno it imports}``, every import statement counted."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for node in ast.walk(ast.parse((PACKAGE / f"{m}.py").read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("immuno."):
                names = [node.module.split(".", 1)[1]]
            elif isinstance(node, ast.Import):
                names = [
                    a.name.split(".", 1)[1] for a in node.names if a.name.startswith("immuno.")
                ]
            graph[m].update(n.split(".")[0] for n in names if n.split(".")[0] in modules)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_finder_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_inside_immuno():
    graph = _graph()
    assert graph["gating"] >= {"gatingml", "flowjo", "autogate"}  # the graph is read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
