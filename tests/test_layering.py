"""The layering of DESIGN.md, read from the source (module- and function-level imports alike):
results imports no other pdspace package; orchestrator and analysis never import each other or
the CLI; only results touches sqlalchemy and alembic; no two modules import each other."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "results", "orchestrator", "analysis", "cli")
FORBIDDEN = {
    "core": {"results", "orchestrator", "analysis", "cli", "ray", "sqlalchemy", "alembic"},
    "results": {"core", "orchestrator", "analysis", "cli", "torch", "ray"},
    "orchestrator": {"analysis", "cli", "sqlalchemy", "alembic"},
    "analysis": {"orchestrator", "cli", "torch", "ray", "sqlalchemy", "alembic"},
    "cli": {"sqlalchemy", "alembic"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


MODULES = _modules()


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_their_layer_allows(package):
    bad = sorted(f"{m} imports {n}" for m, p in MODULES.items() if m.split(".")[0] == package
                 for n in _imports(p) if n.split(".")[0] in FORBIDDEN[package])
    assert not bad, bad


def test_no_import_cycles():
    edges = {m: {n for n in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [])
    # cycles inside core alone are the shared import-check hook's (it covers core); this test adds
    # the packages the hook does not list (results, cli) and the edges between packages
    assert not [c for c in cycles if not all(m.startswith("core") for m in c)], cycles
