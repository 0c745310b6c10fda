"""pipeline.codedeps: the import resolver, the dep compaction, --check / --write, and the params-are-read check."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline import codedeps
from pipeline.codedeps import ImportGraph, check_stages, compact, covers, format_reports, rewrite, stage_code_deps
from pipeline.params import Params

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = ("prepare", "models", "invert", "calibrate", "train", "evaluate")


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# A fake project: ``stages.run`` reaches every module below except the ones named unused / typing_only.
FAKE = {
    "stages/__init__.py": "",
    "stages/run.py": """
        from typing import TYPE_CHECKING

        from . import helpers                   # relative import of a submodule
        from pipeline.sub import tool           # `from package import submodule`

        if TYPE_CHECKING:
            from pipeline import typing_only    # never executed

        def run():
            from pipeline.lazy import thing     # lazy import inside a function
            import pipeline.deep.inner          # `import a.b.c`: the packages' __init__ run too
            return thing

        if __name__ == "__main__":
            from pipeline.entry_only import go  # runs only when this module is the entry
            go()
    """,
    "stages/helpers.py": "from .sibling import x\n",
    "stages/sibling.py": "x = 1\n",
    "stages/other.py": "import stages.run\n",
    "stages/unused.py": "import pipeline.unused\n",
    "pipeline/__init__.py": "",
    "pipeline/sub/__init__.py": "",
    "pipeline/sub/tool.py": "from ..reader import read\n",
    "pipeline/reader.py": """
        from importlib import resources

        def read(name):
            return resources.files("pipeline").joinpath("data", name).read_text()
    """,
    "pipeline/data/a.json": "{}",
    "pipeline/data/b.json": "{}",
    "pipeline/lazy.py": "thing = 1\n",
    "pipeline/deep/__init__.py": "",
    "pipeline/deep/inner.py": "",
    "pipeline/entry_only.py": "def go():\n    pass\n",
    "pipeline/typing_only.py": "",
    "pipeline/unused.py": "",
}

FAKE_NEEDED = {
    "stages/__init__.py", "stages/run.py", "stages/helpers.py", "stages/sibling.py",
    "pipeline/__init__.py", "pipeline/sub/__init__.py", "pipeline/sub/tool.py", "pipeline/reader.py",
    "pipeline/data/a.json", "pipeline/data/b.json", "pipeline/lazy.py", "pipeline/deep/__init__.py",
    "pipeline/deep/inner.py", "pipeline/entry_only.py",
}


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return write_tree(tmp_path, FAKE)


# ------------------------------------------------------------------------------------------ resolver
def test_resolver_follows_relative_lazy_submodule_and_data_imports(fake):
    closure = ImportGraph(fake).closure("stages.run")
    assert closure.files == FAKE_NEEDED
    assert not closure.unresolved
    assert closure.chain("pipeline.reader") == [  # what `--show STAGE --why MODULE` prints
        "stages.run",
        "pipeline.sub.tool (imported at stages.run:5)",
        "pipeline.reader (imported at pipeline.sub.tool:1)",
    ]


def test_main_block_counts_only_for_the_entry(fake):
    files = ImportGraph(fake).closure("stages.other").files
    assert "stages/run.py" in files and "pipeline/lazy.py" in files
    assert "pipeline/entry_only.py" not in files


def test_pycache_is_not_a_project_file(fake):
    (fake / "pipeline/deep/__pycache__").mkdir()
    (fake / "pipeline/deep/__pycache__/inner.cpython-312.pyc").write_bytes(b"\0")
    assert "pipeline/deep" in compact(ImportGraph(fake).closure("stages.run").files, fake)


def test_compaction_lists_a_folder_only_when_all_its_files_are_needed(fake):
    assert compact(FAKE_NEEDED, fake) == [
        # stages/ is not complete (other.py, unused.py): its needed files one by one
        "stages/__init__.py", "stages/helpers.py", "stages/run.py", "stages/sibling.py",
        "pipeline/__init__.py", "pipeline/data", "pipeline/deep", "pipeline/entry_only.py", "pipeline/lazy.py",
        "pipeline/reader.py", "pipeline/sub",
    ]
    everything = {p.relative_to(fake).as_posix() for p in fake.rglob("*") if p.is_file()}
    assert compact(everything, fake) == ["stages", "pipeline"]


def test_star_import_follows_literal_all_submodules(tmp_path):
    root = write_tree(tmp_path, {
        "stages/__init__.py": "",
        "stages/s.py": "from pipeline import *\n",
        "pipeline/__init__.py": "__all__ = ['a']\n",
        "pipeline/a.py": "",
        "pipeline/b.py": "",
    })
    assert ImportGraph(root).closure("stages.s").files == {
        "stages/__init__.py", "stages/s.py", "pipeline/__init__.py", "pipeline/a.py"}


def test_literal_import_module_is_followed_and_a_dynamic_one_reported(tmp_path):
    root = write_tree(tmp_path, {
        "stages/__init__.py": "",
        "stages/s.py": """
            import importlib

            def load(name):
                importlib.import_module("pipeline.a")
                return importlib.import_module(f"pipeline.{name}")
        """,
        "pipeline/__init__.py": "",
        "pipeline/a.py": "",
    })
    closure = ImportGraph(root).closure("stages.s")
    assert "pipeline/a.py" in closure.files
    assert closure.dynamic and "pipeline.{name}" in closure.dynamic[0]


def test_broken_project_imports_are_reported(tmp_path):
    root = write_tree(tmp_path, {
        "stages/__init__.py": "",
        "stages/s.py": "import pipeline.gone\nfrom pipeline.a import missing_name, present\n",
        "pipeline/__init__.py": "",
        "pipeline/a.py": "present = 1\n",
    })
    unresolved = ImportGraph(root).closure("stages.s").unresolved
    assert unresolved == {"stages.s:1 -> pipeline.gone", "stages.s:2 -> pipeline.a.missing_name (no such name)"}


NAME_PRECISE_TREE = {
    "stages/__init__.py": "",
    "stages/cli.py": """
        app = object()

        def run_stage_main(name):
            return _load(name)

        def _load(name):
            from pipeline.lazy import thing
            return thing

        @app.command("report")
        def report_command():
            from pipeline.unused import u   # a user command: runs only when app() is invoked
            return u
    """,
    "stages/s.py": "if __name__ == '__main__':\n    from stages.cli import run_stage_main\n",
    "stages/whole.py": "import stages.cli\n",
    "stages/var.py": "from stages.cli import app\n",
    "pipeline/__init__.py": "",
    "pipeline/lazy.py": "thing = 1\n",
    "pipeline/unused.py": "u = 1\n",
}


def test_name_precise_module_is_followed_through_the_imported_functions_only(tmp_path):
    root = write_tree(tmp_path, NAME_PRECISE_TREE)
    precise = ImportGraph(root, name_precise={"stages.cli"})
    files = precise.closure("stages.s").files
    assert {"stages/cli.py", "pipeline/lazy.py"} <= files
    assert "pipeline/unused.py" not in files
    # the whole module (import stages.cli), a variable taken from it, or no refinement: all of it
    assert "pipeline/unused.py" in precise.closure("stages.whole").files
    assert "pipeline/unused.py" in precise.closure("stages.var").files
    assert "pipeline/unused.py" in ImportGraph(root, name_precise=()).closure("stages.s").files


def test_resolver_is_static(tmp_path):
    root = write_tree(tmp_path, {
        "stages/__init__.py": "",
        "stages/s.py": "raise SystemExit('executed')\nimport pipeline.a\n",
        "pipeline/__init__.py": "raise SystemExit('executed')\n",
        "pipeline/a.py": "",
    })
    assert "pipeline/a.py" in ImportGraph(root).closure("stages.s").files


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_runtime_imports_are_within_the_static_closure_of_the_real_stages(stage):
    """What importing a stage really loads (in a fresh interpreter, ~10 s) is a subset of the static closure."""
    probe = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
             "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('stages', 'pipeline', 'spade_core')))")
    out = subprocess.run([sys.executable, "-c", probe, f"stages.{stage}"], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert set(out.stdout.split()) - set(ImportGraph(REPO).closure(f"stages.{stage}").modules) == set()


# ------------------------------------------------------------------------------------------ dvc.yaml
def test_check_flags_a_removed_dep_and_a_dep_that_no_longer_exists():
    """On a copy of the parsed dvc.yaml whose code deps are first made right (so the test does not depend on
    dvc.yaml being up to date, which test_dvc_yaml checks), drop the dep that covers the stage module."""
    evaluate = copy.deepcopy(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"])
    evaluate["deps"] = [d for d in evaluate["deps"] if not codedeps.is_code_dep(d)] + stage_code_deps("evaluate")
    assert check_stages({"evaluate": evaluate}, REPO)["evaluate"].ok
    needed = codedeps.needed_files("evaluate", REPO)
    victim = next(d for d in evaluate["deps"] if covers(d, "stages/evaluate.py"))
    evaluate["deps"] = [d for d in evaluate["deps"] if d != victim] + ["pipeline/no_longer_here.py"]

    report = check_stages({"evaluate": evaluate}, REPO)["evaluate"]
    assert not report.ok
    lost = {f for f in needed if covers(victim, f) and not any(covers(d, f) for d in evaluate["deps"])}
    assert "stages/evaluate.py" in lost and set(report.missing) == lost
    assert report.extra == {"pipeline/no_longer_here.py": "does not exist"}
    text = format_reports({"evaluate": report})
    assert "missing: stages/evaluate.py" in text and "extra:   pipeline/no_longer_here.py (does not exist)" in text


def test_check_flags_a_folder_broader_than_needed(fake):
    stages = {"run": {"cmd": "python -m stages.run", "deps": ["data/x", "stages", "pipeline"]}}
    report = check_stages(stages, fake)["run"]
    assert report.missing == []
    assert "stages/other.py" in report.extra["stages"] and "pipeline/unused.py" in report.extra["pipeline"]


def test_cli_check_and_write_on_a_fake_project(fake, capsys):
    (fake / "dvc.yaml").write_text(textwrap.dedent("""\
        # top comment
        stages:
          run:
            cmd: python -m stages.run
            deps:
              - data/raw   # input data
              - stages/run.py
              - pipeline/gone.py
            outs:
              - out

          other:
            cmd: python -m stages.other
            deps:
              - stages/other.py

          shell:
            cmd: echo hi
            deps:
              - pipeline/lazy.py
        """))
    args = ["--root", str(fake)]
    assert codedeps.main(["--check", *args]) == 1
    out = capsys.readouterr().out
    assert "run: code deps in dvc.yaml do not match" in out and "missing: pipeline/lazy.py" in out
    assert "extra:   pipeline/gone.py (does not exist)" in out and "shell" not in out

    assert codedeps.main(["--write", *args]) == 0
    text = (fake / "dvc.yaml").read_text()
    assert text.startswith("# top comment\n") and "- data/raw   # input data\n" in text
    assert "\n\n  other:\n" in text  # the blank line after the last dep of `other` survives
    doc = yaml.safe_load(text)["stages"]
    assert doc["run"]["deps"] == ["data/raw", *compact(FAKE_NEEDED, fake)]
    assert doc["shell"]["deps"] == ["pipeline/lazy.py"]  # not a stage module: left alone
    capsys.readouterr()
    assert codedeps.main(["--check", *args]) == 0
    assert codedeps.main(["--write", *args]) == 0
    assert (fake / "dvc.yaml").read_text() == text
    assert "already up to date" in capsys.readouterr().out
    assert codedeps.main(["--show", "run", "--why", "pipeline/lazy.py", *args]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[: len(compact(FAKE_NEEDED, fake))] == compact(FAKE_NEEDED, fake)
    assert shown[-1] == "# why pipeline.lazy: stages.run -> pipeline.lazy (imported at stages.run:11)"


def test_rewrite_of_the_real_dvc_yaml_keeps_everything_but_the_code_deps():
    text = (REPO / "dvc.yaml").read_text()
    new, _ = rewrite(text, REPO)
    assert rewrite(new, REPO) == (new, [])
    old_doc, new_doc = yaml.safe_load(text), yaml.safe_load(new)
    assert [ln for ln in text.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in new.splitlines() if ln.lstrip().startswith("#")]
    for name, stage in old_doc["stages"].items():
        rest = {k: v for k, v in stage.items() if k != "deps"}
        assert rest == {k: v for k, v in new_doc["stages"][name].items() if k != "deps"}
        keep = [d for d in stage["deps"] if not codedeps.is_code_dep(d)]
        assert new_doc["stages"][name]["deps"] == keep + stage_code_deps(name, REPO)
    assert all(r.ok for r in check_stages(new_doc["stages"], REPO).values())


# ------------------------------------------------------------------------------------------ params
def _attribute_names() -> set[str]:
    names: set[str] = set()
    for folder in ("pipeline", "stages"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name in ("params.py", "codedeps.py") and path.parent.name == "pipeline":
                continue  # the schema's own validators do not count as readers
            names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    return names


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, info in model.model_fields.items():
        yield f"{prefix}{name}", name, info.alias
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _fields(info.annotation, f"{prefix}{name}.")


def test_every_declared_param_is_read_by_some_code():
    """A field of ``pipeline/params.py`` that no code in pipeline/ or stages/ reads as ``.name`` is dead.

    Grep-level: a generic name (``seed``, ``lr``) passes as soon as any attribute of that name is read.
    """
    read = _attribute_names()
    unread = [key for key, name, alias in _fields(Params) if name not in read and alias not in read]
    assert unread == [], f"parameters no code reads: {unread}"
