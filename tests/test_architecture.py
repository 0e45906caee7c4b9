"""Dependencies point one way (issue 10, parts 6 and 8), checked on the source, not by importing it.

- ``protocol/`` is sans-I/O (docs/ARCHITECTURE.md decision 2): no module of it imports an event loop, a
  network or process library, a thread, or a clock, at any depth (imports inside functions
  count too).
- The product (``hub/``, ``protocol/``) never imports the dev tooling in ``tools/``.
- The modules of ``hub/`` and ``protocol/`` import each other without a cycle: neither among
  the imports that run when a module is loaded (module level, also inside a module-level
  ``try``/``if``), nor counting late imports inside functions, which hide a cycle from the
  loader but not from a reader (hub/config.py once imported hub/providers.py that way). Only
  imports under ``if TYPE_CHECKING:`` are free.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hub", "protocol")

#: What protocol/ must not import: the event loop and what does I/O with it or beside it
#: (sockets, TLS, selectors, threads, processes, HTTP clients and servers), and the clock
#: (the current time is passed in as an argument).
IO_MODULES = frozenset({
    "asyncio", "aiohttp", "websockets", "socket", "selectors", "ssl", "threading", "multiprocessing",
    "concurrent", "subprocess", "http.client", "http.server", "urllib.request", "requests", "httpx", "time",
})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(*packages: str) -> dict[str, Path]:
    return {_module_name(path): path for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imported(module: str, path: Path, nodes: list[ast.stmt] | ast.Module) -> Iterator[tuple[str, int]]:
    """(module name, line) of every import among ``nodes`` and below them; for ``from x import
    y`` both ``x`` and ``x.y`` (y may be a submodule)."""
    is_package = path.name == "__init__.py"
    roots = nodes.body if isinstance(nodes, ast.Module) else nodes
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, node, is_package)
                yield target, node.lineno
                for alias in node.names:
                    yield f"{target}.{alias.name}", node.lineno


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _load_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The import statements that run when a module with this body is loaded."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _load_time_statements(node.body)
            yield from _load_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _load_time_statements(block)
        elif isinstance(node, ast.With):
            yield from _load_time_statements(node.body)


def _all_but_type_checking(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement of a module but its ``if TYPE_CHECKING:`` blocks (late imports too)."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _all_but_type_checking(node.orelse)
        else:
            yield node


def _import_graph(late: bool = False) -> dict[str, set[str]]:
    """Module → the modules of hub/ and protocol/ it imports when loaded (``late``: or later,
    inside a function). Importing ``a.b.c`` loads the packages ``a`` and ``a.b`` first, so
    those count as imported too."""
    sources = _sources(*PACKAGES)
    graph: dict[str, set[str]] = {name: set() for name in sources}
    pick = _all_but_type_checking if late else _load_time_statements
    for module, path in sources.items():
        statements = list(pick(_parse(path).body))
        for name, _ in _imported(module, path, statements):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in sources and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph[node]):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
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


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


# protocol/ is sans-I/O.


def _io_imports() -> list[str]:
    found = []
    for module, path in _sources("protocol").items():
        for name, line in _imported(module, path, _parse(path)):
            if any(name == banned or name.startswith(banned + ".") for banned in IO_MODULES):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(found))


def test_protocol_imports_no_io() -> None:
    assert not _io_imports()


def test_the_io_check_sees_nested_and_relative_imports(tmp_path) -> None:
    source = "import re\n\ndef f():\n    if True:\n        from asyncio import sleep\n    import socket as s\n"
    path = tmp_path / "protocol" / "x.py"
    path.parent.mkdir()
    path.write_text(source)
    names = [name for name, _ in _imported("protocol.x", path, _parse(path))]
    assert "asyncio" in names and "socket" in names
    relative = ast.parse("from ..hub import app\nfrom . import errors\n").body
    assert _absolute("protocol.normalizers.base", relative[1], False) == "protocol.normalizers"
    assert _absolute("protocol.normalizers", relative[1], True) == "protocol.normalizers"


# The product does not import tools/.


def test_the_product_never_imports_tools() -> None:
    found = []
    for module, path in _sources(*PACKAGES).items():
        for name, line in _imported(module, path, _parse(path)):
            if name == "tools" or name.startswith("tools."):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not sorted(set(found))


# No import cycles.


def test_the_graph_check_finds_a_cycle_and_ignores_type_checking_and_late_imports() -> None:
    body = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hub.app\ntry:\n    import hub.b\n"
        "except ImportError:\n    pass\ndef f():\n    import hub.c\n"
    ).body
    loaded = [node.names[0].name for node in _load_time_statements(body) if isinstance(node, ast.Import)]
    assert loaded == ["hub.b"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_hub_and_protocol() -> None:
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles (modules that import each other when loaded): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_no_hidden_cycles_through_late_imports() -> None:
    """A late import (inside a function) hides a cycle from the loader but not from a reader:
    the modules still depend on each other. Only ``if TYPE_CHECKING:`` imports are free."""
    cycles = _cycles(_import_graph(late=True))
    assert not cycles, "modules that depend on each other through late imports: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(("first", "second"), [
    ("hub.config", "hub.providers"),
    ("hub.app", "hub.session"),
    ("hub.app", "hub.transports.websocket"),
    ("hub.app", "hub.transports.openai_sse"),
    ("hub.session", "hub.transports.websocket"),
    ("hub.session", "hub.transports.openai_sse"),
])
def test_the_named_modules_do_not_import_each_other_in_a_circle(first: str, second: str) -> None:
    graph = _import_graph(late=True)
    if first not in graph or second not in graph:
        pytest.skip(f"{first} or {second} does not exist")
    assert not (_reaches(graph, first, second) and _reaches(graph, second, first))
