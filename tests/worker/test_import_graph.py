"""The import direction rules of docs/architecture.md, read from the source with `ast`: the library has
no Flask and never reaches into the web layer or the entry points (cli.py, server.py); its modules
import one way (no circle); in the web layer no module imports another in a circle or inside a
function (where a circle hides), and no blueprint imports another blueprint (what two share lives in
a module of its own)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.servers import REPO

PACKAGE = REPO / "worker" / "role_injector"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
WEB = {name for name in MODULES if name.startswith("role_injector.web")}
# On top of both: the command line and the server it starts (gunicorn running the web app).
ENTRY_POINTS = {"role_injector.cli", "role_injector.server"}
LIBRARY = set(MODULES) - WEB - ENTRY_POINTS


def runtime_imports(tree: ast.Module) -> Iterator[tuple[ast.stmt, str, bool]]:
    """(node, imported module, whether at the module's top level); imports only made for type checkers
    (`if TYPE_CHECKING:`) are left out. `from a import b` names `a.b` when that is a module."""
    def walk(nodes: list[ast.stmt], top: bool) -> Iterator[tuple[ast.stmt, str, bool]]:
        for node in nodes:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node, alias.name, top
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    yield node, submodule if submodule in MODULES else node.module, top
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
                    yield from walk([n for n in inner if isinstance(n, ast.stmt | ast.ExceptHandler)],  # type: ignore[misc]
                                    top and not nested)
    yield from walk(tree.body, True)


def parsed(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"))


def imports_of(name: str) -> set[str]:
    return {imported for _, imported, _ in runtime_imports(parsed(name))}


def import_graph(names: set[str]) -> dict[str, list[str]]:
    return {name: sorted(i for i in imports_of(name) if i in names and i != name) for name in names}


def circles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Import circles in `graph` (module -> modules it imports), each as the path that closes it."""
    found: list[list[str]] = []
    state = dict.fromkeys(graph, "new")

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in graph[name]:
            if state[target] == "open":
                found.append([*path[path.index(target):], name, target] if target in path else [name, target])
            elif state[target] == "new":
                visit(target, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if state[name] == "new":
            visit(name, [])
    return found


def test_the_library_has_no_flask_and_never_reaches_into_the_web_layer() -> None:
    offending = {name: sorted(i for i in imports_of(name) if i.split(".")[0] in {"flask", "werkzeug", "gunicorn"}
                              or i.startswith("role_injector.web") or i in ENTRY_POINTS)
                 for name in LIBRARY}
    assert {name: found for name, found in offending.items() if found} == {}


def test_the_library_imports_one_way() -> None:
    assert circles(import_graph(LIBRARY)) == []


def test_the_web_layer_has_no_import_circle_and_imports_at_the_top() -> None:
    assert circles(import_graph(WEB)) == []
    nested = [f"{name}:{node.lineno} {imported}" for name in sorted(WEB)
              for node, imported, top in runtime_imports(parsed(name)) if not top and imported in MODULES]
    assert nested == []


def test_no_blueprint_imports_another() -> None:
    blueprints = {name for name in WEB if "Blueprint(" in MODULES[name].read_text(encoding="utf-8")}
    assert {"role_injector.web.ollama", "role_injector.web.openai", "role_injector.web.rest"} <= blueprints
    crossing = {name: sorted(imports_of(name) & (blueprints - {name})) for name in blueprints}
    assert {name: found for name, found in crossing.items() if found} == {}


def test_the_rules_see_a_circle_and_a_nested_import() -> None:
    """The checks themselves, on made-up modules."""
    assert circles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]
    assert circles({"a": ["b", "c"], "b": ["c"], "c": []}) == []
    tree = ast.parse("import json\ndef f():\n    from role_injector.web import app\n")
    assert [(imported, top) for _, imported, top in runtime_imports(tree)] == [
        ("json", True), ("role_injector.web.app", False)]
