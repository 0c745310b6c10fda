"""The code ``deps`` of each DVC stage, computed from the imports instead of listed by hand.

A stage ``stages/<name>.py`` runs the code it imports, transitively. If ``dvc.yaml`` misses one of those files,
editing it leaves a stale cached result; so the code deps are derived here by static analysis (``ast`` only:
no module is imported or executed); ``tests/stages/test_dvc_yaml.py`` fails when ``dvc.yaml`` disagrees.

What counts as imported (see docs/DESIGN.md §7):

* ``import a.b``, ``from a.b import c`` (``c`` may be a submodule), relative imports, ``from p import *`` (plus
  the submodules a literal ``__all__`` of ``p`` names), and ``importlib.import_module("a.b")`` /
  ``__import__("a.b")`` with a literal name;
* imports anywhere in a module, including inside functions (lazy imports count), except in
  ``if TYPE_CHECKING:`` blocks (never executed) and in the ``if __name__ == "__main__":`` block of a module
  that is not the stage being run (never executed on import);
* the ``__init__.py`` of every package on an imported module's path;
* package data read through ``importlib.resources.files("pkg")`` (optionally ``.joinpath("dir", ...)`` or
  ``/ "dir"``): the files under that folder of the package (``pipeline/data``).

One deliberate refinement: a module in :data:`NAME_PRECISE` (``stages.cli``, which holds the ``spade`` user
commands beside the stage entry points) is followed only through the top-level functions imported from it and
the module-level functions those reference; its decorator-registered commands (``predict``, ``report``, ...)
run only when the typer app is invoked, which a stage never does. Importing such a module whole
(``import stages.cli``) or a non-function name from it falls back to the whole module.

Compaction of the result: a folder is listed instead of its files exactly when the stage needs every file
DVC would hash in it (all files of the subtree except ``__pycache__``, ``*.pyc`` and dot-files); otherwise its
needed files (and compacted subfolders) are listed. Entries are ordered by layer (``stages``, ``pipeline``,
``spade_core``) and then by path.

``python -m pipeline.codedeps --check`` exits 1 listing, per stage, the imported files no dep covers and the
listed code deps that should not be there (missing on disk, covering no needed file, or broader than
needed); ``--write`` rewrites the code entries of every stage's ``deps`` in ``dvc.yaml`` (other deps, comments
and layout are kept, via ruamel's round trip); ``--show STAGE [--why MODULE]`` prints one stage's deps, notes
(unresolved and dynamic imports) and the import chain that reaches ``MODULE``.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = "dvc.yaml"

#: The project's top-level packages, in layer order (the order code deps are listed in).
PACKAGES: tuple[str, ...] = ("stages", "pipeline", "spade_core")

#: Modules followed name by name (only through the top-level functions imported from them), see the docstring.
NAME_PRECISE: frozenset[str] = frozenset({"stages.cli"})

#: ``cmd`` of a stage that runs a stage module.
STAGE_CMD = re.compile(r"^python\s+-m\s+(stages\.[A-Za-z_][A-Za-z0-9_]*)(\s|$)")
#: ``cmd`` of a stage that runs a user command of the CLI (``python -m stages.cli train-teacher ...``): the
#: command ``foo-bar`` lives in ``stages.foo_bar`` (e.g. the frozen teacher stage in ``teacher/dvc.yaml``).
CLI_CMD = re.compile(r"^python\s+-m\s+stages\.cli\s+([a-z][a-z0-9-]*)(\s|$)")

_IGNORED_DIRS = ("__pycache__",)
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


# ------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class ImportRef:
    """One import: the absolute module name and the names taken from it (``None``: the module itself)."""

    module: str
    names: tuple[str, ...] | None = None
    line: int = 0


@dataclass
class Scope:
    """What one piece of a module does when it runs: imports, names it references, package data it reads."""

    imports: list[ImportRef] = field(default_factory=list)
    refs: set[str] = field(default_factory=set)
    data: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)  # (package, leading path parts)
    dynamic: list[str] = field(default_factory=list)  # non-literal import_module calls, as "line N: source"


@dataclass
class ModuleInfo:
    """A parsed project module, split into what runs on import and what runs when a function is called."""

    name: str
    path: Path
    is_package: bool
    body: Scope  # executed on import (module level, class bodies, decorators, defaults)
    main: Scope  # the ``if __name__ == "__main__":`` blocks
    defs: dict[str, Scope]  # top-level function name -> its body (nested functions included)
    all_names: tuple[str, ...] | None  # a literal ``__all__``
    bound: frozenset[str] = frozenset()  # every name bound at module level (what ``from m import x`` may take)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _walk(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """``ast.walk`` over several roots, not descending into ``if TYPE_CHECKING:`` bodies."""
    stack = list(nodes)[::-1]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children: list[ast.AST] = list(node.orelse)
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend(children[::-1])


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


class _Parser:
    def __init__(self, name: str, is_package: bool, source: str) -> None:
        self.name = name
        self.is_package = is_package
        self.source = source
        self.package = name if is_package else name.rpartition(".")[0]

    # -- imports
    def _absolute(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        parts = self.package.split(".") if self.package else []
        if level - 1 > len(parts):
            raise ImportError(f"{self.name}: relative import beyond the top-level package")
        base = parts[: len(parts) - (level - 1)]
        return ".".join([*base, module] if module else base)

    def _resource_call(self, node: ast.AST) -> str | None:
        """The package of ``resources.files("pkg")`` / ``files(__package__)``, else ``None``."""
        if not isinstance(node, ast.Call) or not node.args:
            return None
        func = _dotted(node.func)
        if func is None or not (func == "files" or func.endswith("resources.files")):
            return None
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, ast.Name) and arg.id in ("__package__", "__name__"):
            return self.package if arg.id == "__package__" else self.name
        return None

    def _resource_path(self, node: ast.AST) -> tuple[ast.AST, str, tuple[str, ...]] | None:
        """``files(pkg).joinpath("a", "b") / "c"`` -> (the files() call, pkg, literal leading parts)."""
        pkg = self._resource_call(node)
        if pkg is not None:
            return node, pkg, ()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "joinpath":
            inner = self._resource_path(node.func.value)
            if inner is not None:
                return inner[0], inner[1], inner[2] + _leading_literals(node.args)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            inner = self._resource_path(node.left)
            if inner is not None:
                return inner[0], inner[1], inner[2] + _leading_literals([node.right])
        return None

    def scan(self, roots: Sequence[ast.AST]) -> Scope:
        scope = Scope()
        longest: dict[int, tuple[str, tuple[str, ...]]] = {}
        for node in _walk(roots):
            if isinstance(node, ast.Import):
                scope.imports.extend(ImportRef(a.name, None, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = self._absolute(node.module, node.level)
                names = tuple(a.name for a in node.names)
                scope.imports.append(ImportRef(target, names, node.lineno))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                scope.refs.add(node.id)
            elif isinstance(node, ast.Call):
                func = _dotted(node.func)
                if func in ("importlib.import_module", "import_module", "__import__") and node.args:
                    arg = node.args[0]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        level = len(arg.value) - len(arg.value.lstrip("."))
                        scope.imports.append(ImportRef(self._absolute(arg.value[level:] or None, level), None,
                                                       node.lineno))
                    else:
                        scope.dynamic.append(f"line {node.lineno}: {ast.get_source_segment(self.source, node)}")
            if isinstance(node, (ast.Call, ast.BinOp)):
                found = self._resource_path(node)
                if found is not None:
                    call, pkg, parts = found
                    if len(parts) >= len(longest.get(id(call), ("", ()))[1]):
                        longest[id(call)] = (pkg, parts)
        scope.data |= set(longest.values())
        return scope


def _leading_literals(args: Sequence[ast.AST]) -> tuple[str, ...]:
    out: list[str] = []
    for a in args:
        if not (isinstance(a, ast.Constant) and isinstance(a.value, str)):
            break
        out.extend(p for p in a.value.split("/") if p)
    return tuple(out)


def _literal_all(tree: ast.Module) -> tuple[str, ...] | None:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
            try:
                value = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError):
                return None
            return tuple(str(v) for v in value)
    return None


def _bound_names(tree: ast.Module) -> frozenset[str]:
    bound: set[str] = set()
    roots = [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(stmt.name)
    for node in ast.walk(ast.Module(body=roots, type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return frozenset(bound)


def parse_module(name: str, path: Path) -> ModuleInfo:
    """Split one module file into its import-time scope, ``__main__`` scope and top-level function scopes."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    parser = _Parser(name, path.name == "__init__.py", source)
    body_roots: list[ast.AST] = []
    main_roots: list[ast.AST] = []
    defs: dict[str, Scope] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # decorators, defaults and annotations are evaluated at definition time; the body when called
            body_roots.extend([*stmt.decorator_list, stmt.args, *([stmt.returns] if stmt.returns else [])])
            defs[stmt.name] = parser.scan(stmt.body)
        elif isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
            main_roots.extend(stmt.body)
            body_roots.extend(stmt.orelse)
        else:  # classes (their bodies run at definition; methods are kept with them) and plain statements
            body_roots.append(stmt)
    return ModuleInfo(name, path, parser.is_package, parser.scan(body_roots), parser.scan(main_roots), defs,
                      _literal_all(tree), _bound_names(tree))


# ------------------------------------------------------------------------------------------ closure
@dataclass
class Closure:
    """Everything one entry module runs within the project."""

    entry: str
    modules: dict[str, frozenset[str] | None]  # module -> names followed (None: the whole module)
    files: set[str]  # repo-relative POSIX paths (modules and package data)
    unresolved: set[str]  # "importer:line -> target" for project imports that name no file
    dynamic: list[str]  # non-literal dynamic imports, "module line N: source"
    via: dict[str, str] = field(default_factory=dict)  # module -> "importer:line" that first reached it

    def chain(self, module: str) -> list[str]:
        """How the entry reaches ``module``: ``["stages.x", "pipeline.a (imported at stages.x:12)", ...]``."""
        out = [module]
        while module in self.via:
            importer = self.via[module]
            module = importer.split(":")[0]
            out[-1] = f"{out[-1]} (imported at {importer})"
            out.append(module)
        return out[::-1]


class ImportGraph:
    """Resolves project imports below ``root`` for the top-level ``packages``."""

    def __init__(self, root: Path | str = REPO_ROOT, packages: Sequence[str] = PACKAGES,
                 name_precise: Iterable[str] = NAME_PRECISE) -> None:
        self.root = Path(root).resolve()
        self.packages = tuple(packages)
        self.name_precise = frozenset(name_precise)
        self._infos: dict[str, ModuleInfo | None] = {}

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def module_path(self, name: str) -> Path | None:
        """``a/b.py`` or ``a/b/__init__.py`` for a project module ``a.b``; ``None`` if absent or not ours."""
        parts = name.split(".")
        if not name or parts[0] not in self.packages:
            return None
        base = self.root.joinpath(*parts)
        for candidate in (base / "__init__.py", base.with_name(base.name + ".py")):
            if candidate.is_file():
                return candidate
        return None

    def info(self, name: str) -> ModuleInfo | None:
        if name not in self._infos:
            path = self.module_path(name)
            self._infos[name] = None if path is None else parse_module(name, path)
        return self._infos[name]

    def _is_ours(self, name: str) -> bool:
        return name.split(".")[0] in self.packages

    def closure(self, entry: str) -> Closure:
        """The project modules and data files ``python -m <entry>`` runs (see the module docstring)."""
        if self.info(entry) is None:
            raise ModuleNotFoundError(f"no project module {entry!r} under {self.root}")
        requests: dict[str, frozenset[str] | None] = {}
        work: deque[str] = deque()
        unresolved: set[str] = set()
        via: dict[str, str] = {}
        current = [""]  # "importer:line" of the import being followed

        def request(mod: str, names: Iterable[str] | None) -> None:
            if mod not in requests and current[0]:
                via[mod] = current[0]
            if mod not in self.name_precise:
                names = None
            new = None if names is None else frozenset(names)
            if mod in requests:
                old = requests[mod]
                if old is None or (new is not None and new <= old):
                    return
                new = None if new is None else old | new
            requests[mod] = new
            work.append(mod)

        def follow(ref: ImportRef, importer: str) -> None:
            if not self._is_ours(ref.module):
                return
            current[0] = f"{importer}:{ref.line}"
            parts = ref.module.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if self.info(prefix) is None:
                    unresolved.add(f"{importer}:{ref.line} -> {ref.module}")
                    return
                if i < len(parts):
                    request(prefix, None)  # a package's __init__ runs before its submodules
            if ref.names is None:
                request(ref.module, None)
                return
            plain: list[str] = []
            for n in ref.names:
                if n == "*":
                    plain.append(n)
                    info = self.info(ref.module)
                    for sub in (info.all_names or ()) if info else ():
                        if self.info(f"{ref.module}.{sub}") is not None:
                            request(f"{ref.module}.{sub}", None)
                elif self.info(f"{ref.module}.{n}") is not None:  # ``from pkg import submodule``
                    request(f"{ref.module}.{n}", None)
                else:
                    plain.append(n)
                    info = self.info(ref.module)
                    if info is not None and n not in info.bound and not {"*", "__getattr__"} & info.bound:
                        unresolved.add(f"{importer}:{ref.line} -> {ref.module}.{n} (no such name)")
            request(ref.module, plain)

        entry_parts = entry.split(".")
        for i in range(1, len(entry_parts)):
            request(".".join(entry_parts[:i]), None)
        request(entry, None)
        data: set[str] = set()
        dynamic: list[str] = []
        while work:
            mod = work.popleft()
            info = self.info(mod)
            assert info is not None
            for scope in self._scopes(info, requests[mod], is_entry=mod == entry):
                for ref in scope.imports:
                    follow(ref, mod)
                for pkg, parts in scope.data:
                    data |= self._data_files(pkg, parts)
                dynamic.extend(f"{mod} {d}" for d in scope.dynamic)
        files = {self.rel(p) for m in requests if (p := self.module_path(m)) is not None} | data
        return Closure(entry, requests, files, unresolved, sorted(set(dynamic)), via)

    def _scopes(self, info: ModuleInfo, names: frozenset[str] | None, is_entry: bool) -> list[Scope]:
        scopes = [info.body, *([info.main] if is_entry else [])]
        if names is not None and any(n not in info.defs for n in names):
            names = None  # a variable, class or re-export taken from it: follow the whole module
        if names is None:
            return scopes + list(info.defs.values())
        reached: set[str] = set()
        todo = [*names, *(r for s in scopes for r in s.refs)]
        while todo:
            n = todo.pop()
            if n in info.defs and n not in reached:
                reached.add(n)
                todo.extend(info.defs[n].refs)
        return scopes + [info.defs[n] for n in sorted(reached)]

    def _data_files(self, pkg: str, parts: tuple[str, ...]) -> set[str]:
        init = self.module_path(pkg)
        if init is None or init.name != "__init__.py":
            return set()
        target = init.parent
        for part in parts:  # the deepest existing literal prefix
            if not (target / part).exists():
                break
            target = target / part
        if target.is_file():
            return {self.rel(target)}
        return {self.rel(p) for p in hashed_files(target) if p.suffix != ".py" or target != init.parent}


def hashed_files(folder: Path) -> list[Path]:
    """The files DVC hashes for a folder dep (``__pycache__``, ``*.pyc`` and dot-files excluded, per .dvcignore)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not _ignored(f))
    return out


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_DIRS or name.endswith(_IGNORED_SUFFIXES)


# ------------------------------------------------------------------------------------------ compaction
def compact(needed: Iterable[str], root: Path | str = REPO_ROOT, packages: Sequence[str] = PACKAGES) -> list[str]:
    """Folders whose hashed files are all needed replace their files; ordered by layer, then path."""
    root = Path(root).resolve()
    needed = set(needed)
    out: list[str] = []

    def visit(folder: Path) -> None:
        files = hashed_files(folder)
        rels = [p.relative_to(root).as_posix() for p in files]
        if rels and all(r in needed for r in rels):
            out.append(folder.relative_to(root).as_posix())
            return
        for entry in sorted(folder.iterdir()):
            if _ignored(entry.name):
                continue
            if entry.is_dir():
                visit(entry)
            elif (r := entry.relative_to(root).as_posix()) in needed:
                out.append(r)

    for pkg in packages:
        if (root / pkg).is_dir():
            visit(root / pkg)
    outside = needed - {f for f in needed if f.split("/")[0] in packages}
    return sort_deps([*out, *outside], packages)


def sort_deps(deps: Iterable[str], packages: Sequence[str] = PACKAGES) -> list[str]:
    def key(d: str) -> tuple[int, str]:
        top = d.split("/")[0]
        return (packages.index(top) if top in packages else len(packages), d)

    return sorted(set(deps), key=key)


def covers(dep: str, path: str) -> bool:
    """A dep covers a file when it is the file or one of its parent folders."""
    dep = dep.rstrip("/")
    return path == dep or path.startswith(dep + "/")


def is_code_dep(dep: str, packages: Sequence[str] = PACKAGES) -> bool:
    """Deps this module owns: paths inside the project packages (``data/``, ``artifacts/`` ... are not)."""
    return dep.split("/")[0] in packages


# ------------------------------------------------------------------------------------------ stages
def stage_module(stage: Mapping[str, Any]) -> str | None:
    """``stages.<name>`` for a stage whose ``cmd`` is ``python -m stages.<name>`` (or the CLI command module of
    ``python -m stages.cli <name>``), else ``None``."""
    cmd = stage.get("cmd")
    if not isinstance(cmd, str):
        return None
    m = STAGE_CMD.match(cmd.strip())
    if m and m.group(1) != "stages.cli":
        return m.group(1)
    m = CLI_CMD.match(cmd.strip())
    return f"stages.{m.group(1).replace('-', '_')}" if m else None


def needed_files(stage: str, root: Path | str = REPO_ROOT, graph: ImportGraph | None = None) -> set[str]:
    """The project files (modules and package data) stage ``stage`` runs, uncompacted."""
    graph = graph or ImportGraph(root)
    return graph.closure(f"stages.{stage}").files


def stage_code_deps(stage: str, root: Path | str = REPO_ROOT, graph: ImportGraph | None = None) -> list[str]:
    """The compacted code deps of ``stages/<stage>.py``: repo-relative POSIX paths (files and folders)."""
    graph = graph or ImportGraph(root)
    return compact(needed_files(stage, root, graph), graph.root, graph.packages)


@dataclass
class StageReport:
    stage: str
    expected: list[str]
    missing: list[str]  # needed files that no listed dep covers
    extra: dict[str, str]  # listed code dep -> why it should not be listed
    unresolved: set[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra


def check_stages(stages: Mapping[str, Mapping[str, Any]], root: Path | str = REPO_ROOT) -> dict[str, StageReport]:
    """Compare the code deps of each stage module stage (a parsed ``dvc.yaml`` ``stages`` mapping) to the imports."""
    graph = ImportGraph(root)
    reports: dict[str, StageReport] = {}
    for name, stage in stages.items():
        module = stage_module(stage)
        if module is None:
            continue
        closure = graph.closure(module)
        expected = compact(closure.files, graph.root, graph.packages)
        listed = [d for d in (stage.get("deps") or []) if isinstance(d, str) and is_code_dep(d, graph.packages)]
        missing = sorted(f for f in closure.files if not any(covers(d, f) for d in listed))
        extra: dict[str, str] = {}
        for d in listed:
            if d in expected:
                continue
            path = graph.root / d
            whole = next((e for e in expected if covers(e, d)), None)
            if not path.exists():
                extra[d] = "does not exist"
            elif whole is not None:
                extra[d] = f"the stage uses all of {whole}/: list the folder"
            elif not any(covers(d, f) for f in closure.files):
                extra[d] = "not used by the stage"
            else:
                unneeded = [graph.rel(p) for p in (hashed_files(path) if path.is_dir() else [path])]
                unneeded = [u for u in unneeded if u not in closure.files]
                if unneeded:
                    extra[d] = f"covers files the stage does not use: {', '.join(unneeded)}"
                else:
                    extra[d] = "redundant (covered by another entry)"
        for d in listed:  # a file listed beside a folder that covers it
            if d in expected and any(o != d and covers(o, d) for o in listed):
                extra[d] = "redundant (covered by another entry)"
        reports[name] = StageReport(name, expected, missing, extra, closure.unresolved)
    return reports


def format_reports(reports: Mapping[str, StageReport], path: str = DVC_YAML) -> str:
    lines: list[str] = []
    for r in reports.values():
        if r.unresolved:
            lines.append(f"{r.stage}: imports that name no project file: {', '.join(sorted(r.unresolved))}")
        if r.ok:
            continue
        lines.append(f"{r.stage}: code deps in {path} do not match its imports")
        for entry in r.expected:  # missing files, grouped under the entry --write would list
            files = [m for m in r.missing if covers(entry, m)]
            if files and entry not in files:
                lines.append(f"  missing: {entry}/: {', '.join(f[len(entry) + 1:] for f in files)}")
            elif files:
                lines.append(f"  missing: {entry}")
        lines.extend(f"  extra:   {d} ({why})" for d, why in r.extra.items())
        lines.append(f"  expected: {', '.join(r.expected)}")
    bad = [r.stage for r in reports.values() if not r.ok]
    lines.append(f"{len(bad)} stage(s) out of date: {', '.join(bad)}; run `python -m pipeline.codedeps --write`"
                 if bad else f"code deps of {len(reports)} stages ok")
    return "\n".join(lines)


def _yaml_rt() -> Any:
    try:
        from ruamel.yaml import YAML
    except ImportError as err:  # pragma: no cover - ruamel comes with dvc
        raise SystemExit("--write needs ruamel.yaml (installed with dvc)") from err
    y = YAML()
    y.indent(mapping=2, sequence=4, offset=2)
    y.preserve_quotes = True
    y.width = 4096
    return y


def rewrite(text: str, root: Path | str = REPO_ROOT) -> tuple[str, list[str]]:
    """``text`` (a dvc.yaml) with the code deps of every stage module stage recomputed; and the stages changed.

    Non-code deps keep their order and come first; the code deps follow in :func:`sort_deps` order. Comments
    and layout elsewhere survive (ruamel round trip; a trailing comment of the old last dep moves to the new
    last one).
    """
    y = _yaml_rt()
    doc = y.load(text)
    graph = ImportGraph(root)
    changed: list[str] = []
    for name, stage in (doc.get("stages") or {}).items():
        module = stage_module(stage)
        if module is None:
            continue
        deps = stage.get("deps")
        old = list(deps or [])
        keep = [d for d in old if not (isinstance(d, str) and is_code_dep(d, graph.packages))]
        new = keep + compact(graph.closure(module).files, graph.root, graph.packages)
        if new == old:
            continue
        changed.append(name)
        if deps is None:
            stage["deps"] = new
            continue
        # comments ruamel keeps per item: those of kept deps follow them, the old last one's moves to the end
        comments = dict(deps.ca.items)
        tail = comments.pop(len(old) - 1, None)
        deps[:] = new
        deps.ca.items.clear()
        for i, d in enumerate(old):
            if i in comments and d in keep:
                deps.ca.items[keep.index(d)] = comments[i]
        if tail is not None:
            deps.ca.items[len(new) - 1] = tail
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue(), changed


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.codedeps", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a stage's code deps do not match")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps of every stage in dvc.yaml")
    mode.add_argument("--show", metavar="STAGE", help="print the code deps of one stage and notes")
    parser.add_argument("--why", metavar="MODULE", action="append", default=[],
                        help="with --show: the import chain by which the stage reaches MODULE (e.g. pipeline.io)")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--dvc-yaml", default=DVC_YAML, help="pipeline file, relative to --root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    path = root / args.dvc_yaml
    if args.show:
        closure = ImportGraph(root).closure(f"stages.{args.show}")
        print("\n".join(compact(closure.files, root)))
        for note in sorted(closure.unresolved):
            print(f"# unresolved import: {note}")
        for note in closure.dynamic:
            print(f"# dynamic import (not followed): {note}")
        for module in args.why:
            module = module.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
            chain = " -> ".join(closure.chain(module)) if module in closure.modules else "not imported"
            print(f"# why {module}: {chain}")
        return 0
    text = path.read_text(encoding="utf-8")
    if args.write:
        new, changed = rewrite(text, root)
        if new != text:
            path.write_text(new, encoding="utf-8")
        print(f"{args.dvc_yaml}: code deps rewritten for {', '.join(changed)}" if changed
              else f"{args.dvc_yaml}: code deps already up to date")
        return 0
    import yaml

    reports = check_stages((yaml.safe_load(text) or {}).get("stages") or {}, root)
    print(format_reports(reports, args.dvc_yaml))
    return 0 if all(r.ok for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
