"""featx's import graph, read from the source: data flows one way, privates stay home.

Every import counts, the lazy ones inside functions included: a cycle through a function
body is still a cycle in the design. A private module (``featx/_pipeline.py``) may be
imported; a private *name* (``_x``) may not be taken from another featx module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featx"


def _private(name: str) -> bool:
    """``_x`` is private; ``__version__`` and other dunders are not."""
    return name.startswith("_") and not name.startswith("__")


MODULES = {path.stem: path for path in PACKAGE.glob("*.py")}


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """The featx modules ``path`` imports, and the private names it takes from them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> featx module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "featx":
                continue
            if len(parts) == 1:  # from featx import extract, Extractor
                for alias in node.names:
                    if alias.name in MODULES:
                        found.add(alias.name)
                        aliases[alias.asname or alias.name] = alias.name
                    elif _private(alias.name):
                        private.append(f"featx.{alias.name}")
                continue
            found.add(parts[1])
            private += [
                f"{node.module}.{alias.name}" for alias in node.names if _private(alias.name)
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "featx" and len(parts) > 1:
                    found.add(parts[1])
                    if alias.asname:
                        aliases[alias.asname] = parts[1]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path.name}: relative import; featx imports absolutely")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
        ):
            private.append(f"featx.{aliases[node.value.id]}.{node.attr}")
    found.discard(path.stem)
    return {m for m in found if m in MODULES}, private


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's members, found as strongly connected components (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def test_the_graph_is_read_from_every_module():
    # The reader sees lazy imports: cli imports its subcommands' modules inside functions.
    assert len(MODULES) > 20
    assert {"evaluation", "reporting", "tuning"} <= GRAPH["cli"][0]
    assert "learning" in GRAPH["evaluation"][0]


def test_featx_modules_import_each_other_without_cycles():
    edges = {name: deps for name, (deps, _) in GRAPH.items()}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_taken_from_another_featx_module():
    taken = {name: private for name, (_, private) in GRAPH.items() if private}
    assert taken == {}


@pytest.mark.parametrize(
    ("writer", "model"), [("html_report", "report_model"), ("figure", "report_model")]
)
def test_report_writers_read_the_data_model_and_nothing_imports_them_back(writer, model):
    assert model in GRAPH[writer][0]
    importers = {name for name, (deps, _) in GRAPH.items() if writer in deps}
    assert importers <= {"reporting"}  # only the report() flow calls the writers


def test_data_flows_one_way_from_embeddings():
    # The hub and the learning core never reach up into extraction or reporting.
    upstream = {"extract", "combine", "transformer", "distributed", "reporting", "evaluation"}
    for module in ("embeddings", "learning", "splits", "heads", "results", "config"):
        assert not GRAPH[module][0] & upstream, module
