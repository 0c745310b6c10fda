"""Weights DVC can see: ``model.sd_path`` / ``model.clip_checkpoint`` are deps of the ``models`` stage.

A project copy reads its weights from a folder outside the repository (a copy of the embedded teacher and CLIP,
``model.preset: tiny``). After ``dvc repro invert``, a weight file rewritten in place (same path, other bytes)
must make ``dvc status`` report ``models`` changed, and ``dvc repro`` rerun ``models`` and what depends on it.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.params import TINY_CLIP_CHECKPOINT, TINY_SD_PATH

from .conftest import REPO, copy_project, dvc, dvc_test, sh, tiny_params_dict, write_params


def _perturb(path) -> None:
    """Rewrite a safetensors file in place with its first tensor changed."""
    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + torch.ones_like(tensors[first])
    save_file(tensors, str(path))


@pytest.mark.slow
@dvc_test
def test_a_weight_file_changed_in_place_reruns_models_and_what_follows(tool_env, tmp_path):
    root = copy_project(tmp_path / "proj")
    weights = tmp_path / "weights"  # outside the repository
    shutil.copytree(REPO / TINY_SD_PATH, weights / "sd")
    shutil.copyfile(REPO / TINY_CLIP_CHECKPOINT, weights / "clip.safetensors")
    model = {"preset": "tiny", "sd_path": str(weights / "sd"), "clip_checkpoint": str(weights / "clip.safetensors")}
    write_params(root, tiny_params_dict(model=model))
    for cmd in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-qm", "project")):
        sh(root, tool_env, "git", *cmd)
    out = dvc(root, tool_env, "repro", "invert").stdout
    assert "Running stage 'models'" in out and "Running stage 'invert'" in out, out[-3000:]

    status = dvc(root, tool_env, "status", "--with-deps", "invert").stdout
    assert "up to date" in status, status
    status = dvc(root, tool_env, "status").stdout  # the teacher stages too: not frozen, no warning
    assert "WARNING" not in status and "frozen" not in status and "train_teacher" not in status, status

    _perturb(weights / "sd" / "unet" / "diffusion_pytorch_model.safetensors")
    _perturb(weights / "clip.safetensors")
    status = dvc(root, tool_env, "status", "--with-deps", "invert").stdout
    assert "models:" in status and str(weights / "sd") in status and str(weights / "clip.safetensors") in status

    out = dvc(root, tool_env, "repro", "invert").stdout
    assert "Running stage 'models'" in out and "Running stage 'invert'" in out, out[-3000:]
    assert "Stage 'prepare' didn't change" in out
