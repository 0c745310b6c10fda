"""A tiny workspace (params.yaml + prepared data + tiny models) shared by the stage tests."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import ScopedParams, default_params_dict, parse_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

TINY_OVERRIDES = {
    "model": {"preset": "tiny-random", "image_size": 64, "hidden_dim": 32, "num_queries": 8},
    "prepare": {"synthetic": {"num_train": 12, "num_test": 6, "image_size": 64}},
    "invert": {"num_steps": 4, "shard_size": 4, "batch_size": 4},
    "calibrate": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "num_workers": 0},
    "train": {"epochs": 2, "batch_size": 4},
    "evaluate": {"num_visualisations": 1},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) else v
    return out


def tiny_params_dict(**sections: dict) -> dict:
    return _merge(_merge(default_params_dict(), TINY_OVERRIDES), sections)


def write_params(workdir: Path, raw: dict) -> Path:
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_stage_in(workdir: Path, name: str, raw: dict, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Run ``stages.<name>.run`` inside ``workdir`` with the params ``raw`` (scoped like the CLI does)."""
    module = importlib.import_module(f"stages.{name}")
    params = ScopedParams(parse_params(raw), module.PARAMS)
    if monkeypatch is not None:
        monkeypatch.chdir(workdir)
        module.run(params)
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        module.run(params)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """prepare + models on the tiny params, done once per session; copy it with ``tiny_workspace``."""
    root = tmp_path_factory.mktemp("tiny_base")
    raw = tiny_params_dict()
    write_params(root, raw)
    run_stage_in(root, "prepare", raw)
    run_stage_in(root, "models", raw)
    return root


@pytest.fixture
def tiny_workspace(tiny_base: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny prepared workspace (stages may write freely)."""
    dest = tmp_path / "ws"
    shutil.copytree(tiny_base, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_trained(tiny_base: Path, tmp_path_factory) -> Path:
    """invert + calibrate + train on the tiny workspace, once per session (copy before writing)."""
    root = tmp_path_factory.mktemp("tiny_trained") / "ws"
    shutil.copytree(tiny_base, root)
    raw = tiny_params_dict()
    for stage in ("invert", "calibrate", "train"):
        run_stage_in(root, stage, raw)
    return root


@pytest.fixture
def trained_workspace(tiny_trained: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "trained"
    shutil.copytree(tiny_trained, dest)
    return dest


def copy_project(root: Path) -> Path:
    """The project's files (tracked, and untracked but not ignored) copied to ``root``: no outputs, no cache."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True)
    for rel in filter(None, listed.stdout.split("\0")):
        src = REPO / rel
        if src.is_file():  # tracked files deleted in this checkout are skipped
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    return root


# the DVC round trips: ~1 min of git/dvc subprocesses together, so `slow` (CI runs slow tests too)
dvc_test = pytest.mark.skipif(
    shutil.which("git") is None or not (BIN / "dvc").exists(), reason="needs git and dvc in the test environment"
)


@pytest.fixture(scope="module")
def tool_env(tmp_path_factory) -> dict[str, str]:
    """Environment for git/dvc subprocesses: the venv first on PATH (so ``python -m stages.X`` is this
    interpreter), test credentials, and DVC/git configuration isolated from the user's."""
    cfg = tmp_path_factory.mktemp("tool_cfg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_", "GIT_"))}
    env.update(CREDENTIALS)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        AWS_CONFIG_FILE=str(cfg / "aws_config"),
        AWS_SHARED_CREDENTIALS_FILE=str(cfg / "aws_credentials"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(cfg / "dvc_site"),
        DVC_GLOBAL_CONFIG_DIR=str(cfg / "dvc_global"),
        DVC_SYSTEM_CONFIG_DIR=str(cfg / "dvc_system"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(cfg / "gitconfig"),
        GIT_AUTHOR_NAME="spade-test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="spade-test",
        GIT_COMMITTER_EMAIL="test@example.com",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def sh(cwd: Path, env: dict, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; stdout and stderr together in ``.stdout`` (DVC logs to both)."""
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def dvc(cwd: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(cwd, env, str(BIN / "dvc"), *args, check=check)


