"""The house's rules, checked: no import circle, modules of a readable size, the data path in the tree.

(tests/proxy/test_module_graph.py checks that an application connection knows only its host interface.)

Read statically with `ast` (nothing is imported). An import inside `if TYPE_CHECKING:` is for the type
checker only and does not count as a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "policies")
MAX_LINES = 420  # "about 400" (issue #13)
# A longer module says why in its docstring, on a line starting with this.
SIZE_REASON = "Size:"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")
    if MODULES[name].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> set[str]:
    """The project modules `name` imports at run time (each `from a.b import c` also counts `a.b.c`)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = _resolve(name, node)
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "handlers", "finalbody"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt | ast.ExceptHandler):
                    visit([n for n in inner if isinstance(n, ast.stmt)])
                    for handler in inner:
                        if isinstance(handler, ast.ExceptHandler):
                            visit(handler.body)

    visit(tree.body)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_circle() -> None:
    """Depth-first search over the run-time import graph; a back edge is a circle."""
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if name.startswith(dep + ".") or dep == name.rsplit(".", 1)[0]:
                continue  # a module and its own package's __init__
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep) :], dep] if dep in path else [*path, dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])
    assert circles == []


def test_the_core_imports_nothing_from_the_shell() -> None:
    assert {
        name: sorted(d for d in deps if d.startswith("proxy"))
        for name, deps in GRAPH.items()
        if name.startswith("policies") and any(d.startswith("proxy") for d in deps)
    } == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    source = MODULES[name].read_text()
    lines = source.count("\n")
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(source)) or ""
    assert any(line.startswith(SIZE_REASON) for line in doc.splitlines()), (
        f"{MODULES[name].relative_to(ROOT)} has {lines} lines (> {MAX_LINES}) and no '{SIZE_REASON}' line "
        "in its docstring saying why"
    )


def test_the_tree_shows_the_data_path() -> None:
    rooms = {p.name for p in (ROOT / "proxy").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"nats", "ports", "pipeline", "upstream", "admin", "config", "cli"} <= rooms
    flat = sorted(p.name for p in (ROOT / "proxy").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "errors.py", "sidecar.py"]
