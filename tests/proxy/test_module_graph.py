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


def _graph(*, type_checking: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PROXY.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, type_checking=type_checking):
            # `from proxy.x import y` may name a module y or a name in proxy.x: keep the module it reaches.
            while imported not in modules and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_the_proxy_package_imports_without_a_circle() -> None:
    assert _cycle(_graph(type_checking=False)) is None


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


def test_the_sidecar_is_a_composition_root_and_its_rooms_stay_small() -> None:
    # One class, one job (STYLE.md "Rooms of the shell"): the work lives in the collaborators.
    paths = [
        PROXY / "sidecar.py",
        *sorted((PROXY / "pipeline").glob("*.py")),
        PROXY / "ports" / "host.py",
        PROXY / "ports" / "listener.py",
        *sorted((PROXY / "upstream").glob("*.py")),
    ]
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in paths}
    assert sizes["proxy/sidecar.py"] <= 320, sizes
    assert {path: n for path, n in sizes.items() if n > 410} == {}
