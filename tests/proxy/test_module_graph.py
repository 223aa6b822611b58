"""The shell's import graph: no circles, and a client connection knows only its `ClientHost` (#13)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, *, type_checking: bool) -> set[str]:
    """The proxy.* modules `path` imports at module level (run time), plus those under `if TYPE_CHECKING:`
    when `type_checking` is set. Imports inside functions run later and cannot close a circle at import."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                if type_checking:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {name for name in found if name == "proxy" or name.startswith("proxy.")}


def test_a_client_connection_depends_on_its_host_interface_not_on_the_sidecar() -> None:
    # Type-only imports count here: the connection must not even name the sidecar or the pipeline.
    imported = _imports(PROXY / "ports" / "nats_port.py", type_checking=True)
    sidecar_side = {
        name
        for name in imported
        if name.startswith(("proxy.sidecar", "proxy.pipeline", "proxy.upstream", "proxy.admin"))
        or name == "proxy.ports.listener"
    }
    assert sidecar_side == set()
    assert "proxy.ports.host" in imported
    # The interface names no implementation of it.
    host_imports = _imports(PROXY / "ports" / "host.py", type_checking=True)
    assert not {
        n for n in host_imports if n.startswith(("proxy.sidecar", "proxy.pipeline", "proxy.ports.listener"))
    }
