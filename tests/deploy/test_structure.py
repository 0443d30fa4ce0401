"""The structure drawing: the import graph of ``daemons/`` and ``protocols/``, read
with :mod:`ast`, and the rules it must keep (docs/architecture.md).

* no daemon package imports another daemon package (``runtime``, ``cluster``,
  ``tools``, ``lab`` and ``cli`` are shared infrastructure);
* ``protocols/`` imports nothing from ``daemons/`` (sans-I/O, STYLE.md);
* no import cycle between modules (imports under ``if TYPE_CHECKING:`` are
  annotations only and do not count);
* docs/architecture.md shows the package graph as it is.

    .venv/bin/python tests/deploy/test_structure.py   # prints the drawing for the docs
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("daemons", "protocols")
#: daemons/ entries every daemon may use
SHARED = frozenset({"runtime", "cluster", "tools", "lab", "cli"})
DOC = REPO / "docs" / "architecture.md"
BEGIN, END = "```mermaid\n", "```\n"


def modules() -> dict[str, Path]:
    """Every module of daemons/ and protocols/ by dotted name."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements, those under ``if TYPE_CHECKING:`` left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of daemons/ and protocols/ it imports."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # "from pkg import mod" names a module; "from mod import thing" does not
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def unit(module: str) -> str:
    """The package a module belongs to in the drawing: ``daemons.X`` / ``protocols.X``
    (``daemons.cli`` and the roots stand for themselves)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        edges = out.setdefault(unit(src), set())
        edges.update(unit(t) for t in targets if unit(t) != unit(src))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def daemon_package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "daemons" or len(parts) < 2 or parts[1] in SHARED:
        return None
    return parts[1]


def mermaid(graph: dict[str, set[str]]) -> str:
    """The package graph as a mermaid flowchart (what docs/architecture.md holds)."""
    packages = package_graph(graph)
    lines = ["flowchart LR"]
    shown = {p for p, targets in packages.items() if targets} | set().union(*packages.values())
    lines += [f"    {p.replace('.', '_')}[{p}]" for p in sorted(shown)]
    for src in sorted(packages):
        lines += [f"    {src.replace('.', '_')} --> {dst.replace('.', '_')}"
                  for dst in sorted(packages[src])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tests


def test_the_graph_sees_the_imports_it_must() -> None:
    graph = import_graph()
    assert "protocols.sip.message" in graph["protocols.sip.transaction"]
    assert "daemons.runtime.sip_transport" in graph["daemons.sip_proxy.proxy"]
    assert "daemons.sip_proxy.registrar" in graph["daemons.sip_proxy.registrar_front"]


def test_no_daemon_package_imports_another() -> None:
    wrong = sorted(
        (src, dst) for src, targets in import_graph().items() for dst in targets
        if daemon_package(src) and daemon_package(dst)
        and daemon_package(src) != daemon_package(dst))
    assert wrong == [], "move what two daemons share to daemons/runtime or protocols/"


def test_protocols_import_no_daemon_code() -> None:
    wrong = sorted((src, dst) for src, targets in import_graph().items() for dst in targets
                   if src.startswith("protocols") and dst.startswith("daemons"))
    assert wrong == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_architecture_doc_shows_the_current_graph() -> None:
    text = DOC.read_text()
    start = text.index(BEGIN) + len(BEGIN)
    drawn = text[start:text.index(END, start)]
    assert drawn == mermaid(import_graph()), \
        "regenerate: .venv/bin/python tests/deploy/test_structure.py"


if __name__ == "__main__":
    sys.stdout.write(mermaid(import_graph()))
