"""A tiny workspace (params.yaml + prepared data + tiny models) shared by the stage tests."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.params import ScopedParams, default_params_dict, parse_params

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
