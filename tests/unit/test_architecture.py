"""The layout holds: no import cycles between raygpu's modules (imports inside functions
included), the import contracts of pyproject.toml, and a CLI whose commands all load."""

import subprocess
import sys
from pathlib import Path

import grimp
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("raygpu", "deployments", "autoscaling", "billing")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph(*PACKAGES)
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    # A package's __init__ importing its own modules is how a package exposes them, not a cycle.
    edges = {
        m: {t for t in graph.find_modules_directly_imported_by(m) if t in modules and not m.startswith(t + ".")}
        for m in modules
    }
    assert strongly_connected(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_import_contracts_hold():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_command_has_help():
    from raygpu.cli import main

    runner = CliRunner()
    names = list(main.commands)
    assert {
        "up",
        "down",
        "deploy",
        "ls",
        "status",
        "call",
        "logs",
        "stop",
        "token",
        "simulate",
        "bill",
        "weights",
        "pool",
        "cost",
    } <= set(names)
    for name in names:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, (name, result.output)


def test_every_import_of_raygpu_code_in_the_benchmarks_resolves():
    """Benchmarks import raygpu inside functions (they start clusters); a renamed module must
    fail here, not an hour into a benchmark run."""
    import ast
    import importlib

    missing = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "raygpu",
                "deployments",
                "billing",
                "autoscaling",
            ):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}: from {node.module} import {alias.name}")
    assert not missing, missing


def test_modules_that_moved_into_rooms_still_import_from_their_old_paths():
    import importlib

    from raygpu._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old


def test_no_module_of_the_four_packages_is_over_500_lines():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    long = {
        str(path.relative_to(root)): n
        for package in ("raygpu", "deployments", "autoscaling", "billing")
        for path in (root / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, f"split these along their concerns: {long}"
