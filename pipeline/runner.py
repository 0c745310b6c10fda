"""How a stage is started: ``python -m stages.<name> [--params FILE]`` (what ``dvc.yaml`` runs), ``spade <name>``
and ``spade <name> --nproc N`` (under torchrun).

Every stage module ends with::

    if __name__ == "__main__":
        from pipeline.runner import stage_main

        stage_main("<name>", PARAMS, run)

so running a stage imports neither ``stages.cli`` nor the stage module a second time. Both entries load the
parameters the stage declares (:func:`pipeline.params.stage_params`); an invalid parameter file prints its
message on stderr and exits with status 2. (``pipeline.params`` is imported on use: ``spade --help`` stays fast.)
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


@contextlib.contextmanager
def exit_on(*errors: type[Exception], prefix: str = "error: ", code: int = 1) -> Iterator[None]:
    """Turn the expected ``errors`` of a command into ``<prefix><message>`` on stderr and exit status ``code``."""
    try:
        yield
    except errors as err:
        print(f"{prefix}{err}", file=sys.stderr)
        raise SystemExit(code) from None


def scoped_params(declared: Iterable[str], params_file: str | Path = PARAMS_FILE) -> ScopedParams:
    """The view of ``params_file`` a stage declaring ``declared`` may read; exit 2 if the file is invalid."""
    from pipeline.params import ParamsError, stage_params

    with exit_on(ParamsError, prefix="", code=2):
        params = stage_params(declared, params_file)
    return params


def run_stage(module: ModuleType, params_file: str | Path = PARAMS_FILE) -> None:
    """Run a stage module's ``run`` with its declared ``PARAMS`` loaded from ``params_file``."""
    module.run(scoped_params(module.PARAMS, params_file))


def stage_main(
    name: str,
    params_decl: tuple[str, ...],
    run: Callable[[ScopedParams], None],
    argv: Sequence[str] | None = None,
) -> None:
    """``python -m stages.<name> [--params FILE]``: parse the arguments, load the scoped params, ``run``."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", "-p", default=PARAMS_FILE, help="Parameter file to read.")
    args = parser.parse_args(argv)
    run(scoped_params(params_decl, args.params))


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
