"""The layout rules of STYLE.md, checked: one concept per module (none too long), no
import cycles, and the request path (edge/) imported by nothing in infra/ but the
`ocedge dev` command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "container", "infra")
MAX_LINES = 350
# The one module of infra/ that may import the edge: the command that runs it locally.
EDGE_IMPORTER = "infra.cli.dev"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        # ``from infra import cli`` names a module; ``from infra.cli import main`` a member.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_module_is_longer_than_the_limit() -> None:
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    return cycles


def test_there_is_no_import_cycle() -> None:
    # A package's __init__ importing its own submodules is how a package exposes its
    # API; a submodule importing its package's __init__ back is the cycle we refuse.
    edges = {name: {t for t in targets if t not in _ancestors(name)}
             for name, targets in _graph().items()}
    cycles = _cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_only_the_dev_command_in_infra_imports_the_edge() -> None:
    offenders = {name: sorted(t for t in targets if t.split(".")[0] == "edge")
                 for name, targets in _graph().items()
                 if name.startswith("infra") and name != EDGE_IMPORTER}
    offenders = {name: targets for name, targets in offenders.items() if targets}
    assert not offenders, f"infra/ modules importing the edge: {offenders}"


def test_the_checks_find_a_cycle_and_a_lazy_import(tmp_path: Path) -> None:
    """The checks above can fail: fed made-up code, they see what is wrong."""
    assert _cycles({"infra.a": {"infra.b"}, "infra.b": {"infra.c"}, "infra.c": {"infra.a"}}) \
        == [["infra.a", "infra.b", "infra.c", "infra.a"]]
    assert _cycles({"infra.a": {"infra.b"}, "infra.b": set()}) == []
    lazy = tmp_path / "a.py"
    lazy.write_text("def f():\n    from edge.app import create_app\n")
    assert _imports("infra.a", lazy, {"infra.a", "edge.app", "edge"}) == {"edge.app"}
