"""How a stage is started: ``python -m stages.<name> [--params FILE]`` (what ``dvc.yaml`` runs), ``spade <name>``
and ``spade <name> --nproc N`` (under torchrun).

Every stage module ends with::

    if __name__ == "__main__":
        from pipeline.runner import stage_main

        stage_main("<name>", PARAMS, run)

so running a stage imports neither ``stages.cli`` nor the stage module a second time. Both entries load the
parameters the stage declares (:func:`pipeline.params.stage_params`), sweep the leftovers of killed runs from the
folders that hold the pipeline's outputs (``data/``, ``artifacts/``: :func:`pipeline.io.sweep_leftovers`, so a
leftover of a stage that DVC now skips goes too; each stage also sweeps and checks its own outputs first) and
run the stage inside :func:`user_errors`. (``pipeline.params`` is imported on use: ``spade --help`` stays fast.)

Errors the user can fix arrive as one line on stderr, ``error: <message>`` (the message names the file, record
or parameter first), plus one ``hint: <what to do>`` line where the error carries a hint, and a distinct exit
status per error class (:data:`EXIT_CODES`, most specific class first):

====  ==================================================================================================
code  error
====  ==================================================================================================
2     invalid parameter file (``pipeline.params.ParamsError``)
3     bad dataset file or record (``pipeline.datasets.psg.DatasetError``)
4     inversion store of other settings, or unfinished (``pipeline.stores.StoreMismatchError``,
      ``StoreIncompleteError``)
5     permission denied, output not writable (``PermissionError``, ``pipeline.io.OutputNotWritableError``)
1     any other expected error: a bad input value (``ValueError``), a missing or unreadable input
      (``FileNotFoundError``, ``OSError``)
====  ==================================================================================================

(class 1 errors, which may also be bugs, get the hint to rerun for the traceback). The traceback is shown only
with ``spade --debug ...``, ``python -m stages.<name> --debug`` or ``SPADE_DEBUG=1`` (then the error propagates
as usual); any other exception (a bug) keeps its traceback and Python's exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.params import ScopedParams

PARAMS_FILE = "params.yaml"
DEBUG_ENV = "SPADE_DEBUG"
EXIT_OTHER, EXIT_PARAMS, EXIT_DATASET, EXIT_STORE, EXIT_OUTPUT = 1, 2, 3, 4, 5
# (module, class, exit status), most specific first. Classes are looked up in ``sys.modules``: one whose module
# was never imported cannot have been raised, so matching an error imports nothing heavy (torch, zarr).
EXIT_CODES: tuple[tuple[str, str, int], ...] = (
    ("pipeline.params", "ParamsError", EXIT_PARAMS),
    ("pipeline.datasets.psg", "DatasetError", EXIT_DATASET),
    ("pipeline.stores", "StoreMismatchError", EXIT_STORE),
    ("pipeline.stores", "StoreIncompleteError", EXIT_STORE),
    ("builtins", "PermissionError", EXIT_OUTPUT),
    ("builtins", "ValueError", EXIT_OTHER),
    ("builtins", "OSError", EXIT_OTHER),
)
DEBUG_HINT = f"rerun with `spade --debug ...` or {DEBUG_ENV}=1 to see the traceback"


def debug_enabled() -> bool:
    """``SPADE_DEBUG`` is set to something other than empty / 0 / false / no / off."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def exit_code(err: BaseException) -> int | None:
    """The exit status of an expected error (:data:`EXIT_CODES`); None for anything else (a bug)."""
    for module, name, code in EXIT_CODES:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return code
    return None


def error_message(err: BaseException) -> str:
    """``err`` as one line: an ``OSError`` as ``<file>: <reason>``, the lines of a longer message joined."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror and str(err).startswith("[Errno"):
        text = f"{err.filename}: {err.strerror}"
    elif isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head, rest = lines[0], lines[1:]
    return f"{head.rstrip(':')}: {'; '.join(rest)}" if rest else head


def report_error(err: BaseException, prefix: str = "error: ", hint: str | None = None) -> None:
    """Print ``<prefix><one-line message>`` and, if ``err`` (or the caller) has one, ``hint: <hint>`` on stderr."""
    print(f"{prefix}{error_message(err)}", file=sys.stderr)
    hint = getattr(err, "hint", None) or hint
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the expected errors of a run into one line and the exit status of their class (module docstring);
    anything else, and everything under ``SPADE_DEBUG=1``, propagates with its traceback."""
    try:
        yield
    except Exception as err:
        code = exit_code(err)
        if code is None or debug_enabled():
            raise
        report_error(err, hint=DEBUG_HINT if code == EXIT_OTHER else None)
        raise SystemExit(code) from None


@contextlib.contextmanager
def exit_on(*errors: type[Exception], prefix: str = "error: ", code: int = 1) -> Iterator[None]:
    """Turn the expected ``errors`` of a command into ``<prefix><message>`` on stderr and exit status ``code``
    (the traceback instead under ``SPADE_DEBUG=1``)."""
    try:
        yield
    except errors as err:
        if debug_enabled():
            raise
        report_error(err, prefix=prefix)
        raise SystemExit(code) from None


def scoped_params(declared: Iterable[str], params_file: str | Path = PARAMS_FILE) -> ScopedParams:
    """The view of ``params_file`` a stage declaring ``declared`` may read; exit 2 if the file is invalid."""
    from pipeline.params import stage_params

    with user_errors():
        params = stage_params(declared, params_file)
    return params


def sweep_output_folders() -> None:
    """Remove the ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` leftovers of dead processes in the folders that
    hold the pipeline's outputs (relative to the working directory, like every stage path)."""
    from pipeline import paths
    from pipeline.io import sweep_leftovers

    for folder in dict.fromkeys((paths.PREPARED.parent, paths.MODELS.parent)):
        sweep_leftovers(folder)


def run_stage(module: ModuleType, params_file: str | Path = PARAMS_FILE) -> None:
    """Run a stage module's ``run`` with its declared ``PARAMS`` loaded from ``params_file``."""
    params = scoped_params(module.PARAMS, params_file)
    with user_errors():
        sweep_output_folders()
        module.run(params)


def stage_main(
    name: str,
    params_decl: tuple[str, ...],
    run: Callable[[ScopedParams], None],
    argv: Sequence[str] | None = None,
) -> None:
    """``python -m stages.<name> [--params FILE]``: parse the arguments, load the scoped params, ``run``."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", "-p", default=PARAMS_FILE, help="Parameter file to read.")
    parser.add_argument("--debug", action="store_true", help=f"Show tracebacks (same as {DEBUG_ENV}=1).")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    params = scoped_params(params_decl, args.params)
    with user_errors():
        sweep_output_folders()
        run(params)


def launch_torchrun(name: str, params_file: str, nproc: int) -> int:
    """Re-run ``python -m stages.<name>`` under ``torchrun --standalone --nproc_per_node nproc``; its exit code."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        f"stages.{name}",
        "--params",
        params_file,
    ]
    env = {**os.environ, "SPADE_NPROC": ""}
    return subprocess.call(cmd, env=env)
