"""Real weights outside the project: a weight file replaced in place is refused, not silently used."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

from pipeline import paths
from pipeline.models import build_manifest, load_models


def test_external_weights_replaced_in_place_are_refused(tmp_path):
    sd, clip = tmp_path / "sd", tmp_path / "clip"
    shutil.copytree(paths.TEACHER_WEIGHTS, sd)
    shutil.copytree(paths.EMBEDDED_CLIP, clip)
    params = SimpleNamespace(preset="sd", sd_path=str(sd), clip_arch=str(clip / "spade-tiny-clip.json"),
                             clip_checkpoint=str(clip / "spade-tiny-clip.safetensors"), seed=0, image_size=64)
    out = tmp_path / "models"
    manifest = build_manifest(params, out)
    assert not manifest["diffusion"]["relative"]
    load_models(out)  # unchanged: loads

    weights = sd / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1e-3  # fine-tuned in place, same file name
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"model.sd_path=.*changed since the models stage"):
        load_models(out)
    build_manifest(params, out)  # the models stage rerun records the new identity
    load_models(out)

    (clip / "spade-tiny-clip.safetensors").write_bytes((clip / "spade-tiny-clip.safetensors").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="model.clip_checkpoint"):
        load_models(out)
