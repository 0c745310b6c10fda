"""The house rules of the layout: imports flow stages -> pipeline -> spade_core, stages stay thin front doors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGE_MAX_LINES = 150
CLI_MAX_LINES = 250  # the CLI holds one short typer function per command (each <= COMMAND_MAX_LINES)
COMMAND_MAX_LINES = 25


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, lazy imports inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize(("package", "forbidden"), [("spade_core", ("pipeline", "stages")), ("pipeline", ("stages",))])
def test_imports_flow_one_way(package, forbidden):
    bad = [
        f"{f.relative_to(REPO)} imports {m}"
        for f in _files(package)
        for m in _imported_modules(f)
        if m.split(".")[0] in forbidden
    ]
    assert not bad, bad


def test_no_stage_imports_another_stage():
    bad = []
    for f in _files("stages"):
        if f.name in ("cli.py", "__init__.py"):  # the CLI is the front door that dispatches to the stages
            continue
        bad += [f"{f.name} imports {m}" for m in _imported_modules(f) if m == "stages" or m.startswith("stages.")]
    assert not bad, bad


def test_stage_modules_are_thin():
    sizes = {f.name: len(f.read_text().splitlines()) for f in _files("stages")}
    assert all(n <= (CLI_MAX_LINES if name == "cli.py" else STAGE_MAX_LINES) for name, n in sizes.items()), sizes
    cli = ast.parse((REPO / "stages" / "cli.py").read_text())
    long = {f.name: f.end_lineno - f.lineno + 1 for f in cli.body if isinstance(f, ast.FunctionDef)
            if f.end_lineno - f.lineno + 1 > COMMAND_MAX_LINES}
    assert not long, long


def test_a_stage_run_imports_its_module_once(tmp_path):
    """``python -m stages.<name>`` runs the module as ``__main__`` and must not import it again (nor the CLI)."""
    probe = (
        "import runpy, sys; sys.argv = ['x', '--params', 'missing.yaml']\n"
        "try:\n    runpy.run_module('stages.models', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('stages')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['stages']", out.stdout
