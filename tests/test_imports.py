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


def test_the_public_api_loads_lazily_and_every_name_resolves():
    """``import immuno`` imports none of its modules (nor numpy): each public name is
    loaded on first use, from the module that defines it."""
    import subprocess
    import sys

    probe = (
        "import sys, immuno\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('immuno.') or m == 'numpy')\n"
        "print(loaded)\n"
        "for name in immuno.__all__:\n"
        "    assert getattr(immuno, name) is not None, name\n"
        "assert immuno.read_fcs.__module__ == 'immuno.read'\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]", out[0]
    assert out[1] == "ok"
