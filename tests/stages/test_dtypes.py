"""Every stage, and ``spade predict``, with the diffusion models in half precision (``model.dtype``) on the CPU.

Each case runs prepare -> models -> invert -> calibrate -> train -> evaluate once in a fresh workspace with very
small settings (~10 s), then ``predict_files`` in the same dtype. float16 on the CPU works with torch 2.14 (all
ops these tiny models use have CPU half kernels; docs/INVERSION.md §6).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.models import load_models
from pipeline.student import load_student
from stages.predict import predict_files

from .conftest import run_stage_in, tiny_params_dict, write_params

STAGES = ("prepare", "models", "invert", "calibrate", "train", "evaluate")


@pytest.mark.parametrize(("dtype", "preset"), [("bfloat16", "tiny"), ("float16", "tiny-random")])
def test_every_stage_and_predict_in_half_precision(tmp_path, monkeypatch, dtype, preset):
    ws = tmp_path / "ws"
    ws.mkdir()
    raw = tiny_params_dict(
        model={"dtype": dtype, "preset": preset, "device": "cpu"},
        invert={"num_steps": 2},
        calibrate={"steps": 2},
        train={"epochs": 1},
    )
    write_params(ws, raw)
    for stage in STAGES:
        run_stage_in(ws, stage, raw, monkeypatch)
    art = ws / "artifacts"

    models = load_models(art / "models", device="cpu", dtype=dtype)
    student = load_student(models, art / "calibrate")
    assert next(student.unet.parameters()).dtype == getattr(torch, dtype)  # the run really was half precision
    lora = [p for n, p in student.unet.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # the calibrated LoRA weights, not rounded
    state = load_file(str(art / "train/model.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())  # head: float32
    summary = json.loads((art / "metrics.json").read_text())
    assert summary["closed"]["num_images"] == 6 and math.isfinite(summary["closed"]["R@50"])

    image = np.zeros((48, 80, 3), dtype=np.uint8)
    image[:, :40] = (200, 30, 30)
    Image.fromarray(image).save(tmp_path / "mine.png")
    written = predict_files([tmp_path / "mine.png"], tmp_path / "out", max_triplets=5, dtype=dtype)
    graph = json.loads(written[0].read_text())
    assert all(math.isfinite(o["score"]) for o in graph["objects"]) and len(graph["triplets"]) <= 5
