"""The shape of the imports: the protocol core loads neither Flask nor psycopg2, the service's
core (settings, database, repository, registries, mcp/ minus its blueprints) loads no Flask,
and no module imports one that imports it back, function-level imports included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

PURE = ("metamcp", "metamcp.errors", "metamcp.mcp.naming", "metamcp.mcp.protocol", "metamcp.mcp.jsonrpc",
        "metamcp.mcp.sse")
#: Modules that are Flask's side of the service: the app, the REST API and the MCP blueprints.
FLASK_EDGE = ("metamcp.app", "metamcp.api", "metamcp.mcp.transport", "metamcp.mcp.legacy_sse",
              "metamcp.mcp.tool_api", "metamcp.request_body", "metamcp.client_config")


def loaded_by(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    script = (f"import sys\nimport {', '.join(modules)}\n"
              f"print(sorted(m for m in {watched!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # noqa: S307 - our own subprocess printed a list of names


def module_names() -> dict[str, Path]:
    package = ROOT / "metamcp"
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere (functions too), but not for type checking."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for node in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return {name for name in found if name in known and name != "metamcp"}


def test_protocol_core_imports_without_flask_or_psycopg2() -> None:
    assert loaded_by(list(PURE), ("flask", "flask_smorest", "psycopg2")) == []


def test_the_core_imports_without_flask() -> None:
    core = [name for name in module_names() if not name.startswith(FLASK_EDGE)
            and name not in ("metamcp.gunicorn_conf",)]
    assert "metamcp.repository" in core and "metamcp.mcp.dispatcher" in core and "metamcp.mcp.router" in core
    assert loaded_by(core, ("flask", "flask_smorest", "werkzeug")) == []


def test_there_is_no_import_cycle() -> None:
    known = module_names()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)
    assert graph["metamcp.db"] and "metamcp.db" in graph["metamcp.repository"]  # the graph is real


#: The path of a call, top-down (ARCHITECTURE.md): a module may import only its own layer and
#: those below it. The views (REST and MCP blueprints) are one layer.
LAYERS = (("metamcp.app",),
          ("metamcp.api", "metamcp.mcp.transport", "metamcp.mcp.legacy_sse", "metamcp.mcp.tool_api"),
          ("metamcp.mcp.gateway",), ("metamcp.mcp.dispatcher",), ("metamcp.mcp.streams",),
          ("metamcp.mcp.router",), ("metamcp.mcp.catalog",), ("metamcp.mcp.pool",), ("metamcp.mcp.health",),
          ("metamcp.mcp.upstream",))


def layer(name: str) -> int | None:
    return next((i for i, prefixes in enumerate(LAYERS)
                 for prefix in prefixes if name == prefix or name.startswith(prefix + ".")), None)


def test_the_call_path_imports_only_downward() -> None:
    known = module_names()
    upward = []
    for name, path in known.items():
        own = layer(name)
        for target in imports_of(path, known):
            theirs = layer(target)
            if own is not None and theirs is not None and theirs < own:
                upward.append(f"{name} -> {target}")
    assert upward == []
    assert "metamcp.mcp.router" in imports_of(known["metamcp.mcp.dispatcher"], known)  # the check is real
