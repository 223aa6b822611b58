"""policies/ is the functional core: no clock, no randomness source, no I/O, no asyncio, no metrics client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

POLICIES = Path(__file__).resolve().parents[2] / "policies"
FORBIDDEN = {
    "time",
    "random",
    "asyncio",
    "socket",
    "logging",
    "threading",
    "prometheus_client",
    "proxy",
    "os",
}


def _runtime_imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # annotations only
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                names.update(alias.name.split(".")[0] for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module:
                names.add(sub.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_nothing_impure(path: Path) -> None:
    assert not _runtime_imports(ast.parse(path.read_text())) & FORBIDDEN


def test_there_are_modules_to_check() -> None:
    assert {p.name for p in POLICIES.glob("*.py")} >= {"engine.py", "levels.py", "rate.py", "subjects.py"}
