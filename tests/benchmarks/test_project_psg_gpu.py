"""The GPU projection counts the FLOPs of SD-1.5-shaped calls on the meta device and multiplies them out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from project_psg_gpu import PSG_TEST_IMAGES, cpu_time, hours, model_flops, stage_work


def test_flops_are_counted_and_scale_with_the_image():
    small, large = model_flops(128), model_flops(256)
    for name in ("unet", "unet_fwd_bwd", "vae_encode"):
        assert 3.9 < large[name] / small[name] < 6.0  # 4x the pixels; attention grows faster than linear
    assert large["clip_image"] == small["clip_image"]  # CLIP sees 224 px whatever the image size
    assert 1.8 < large["unet_fwd_bwd"] / large["unet"] < 3.2  # a backward to the inputs costs about a forward
    # SD-1.5's UNet at 64x64 latents is ~0.8 TFLOP (2 x multiply-adds), the figure quoted in the README
    assert 0.7e12 < model_flops(512)["unet"] < 0.9e12


def test_stage_work_multiplies_calls_and_images():
    f = {"unet": 2.0, "unet_fwd_bwd": 5.0, "vae_encode": 3.0, "clip_image": 1.0}
    args = argparse.Namespace(invert_method="belm", invert_steps=50, calibrate_epochs=1.0, train_epochs=12,
                              cache_features=False)
    rows = {stage: (images, per_image) for stage, _, images, per_image in stage_work(f, args)}
    assert rows["invert"] == (46_000, 3.0 + 50 * 2.0)  # BELM: one UNet call per step, no extra recording call
    assert rows["calibrate"] == (46_000, 3.0 + 1.0 + 5.0)
    assert rows["train"] == (12 * 46_000, 6.0) and rows["evaluate"] == (PSG_TEST_IMAGES, 6.0)
    args.cache_features, args.invert_method = True, "ddim"
    rows = {stage: (images, per_image) for stage, _, images, per_image in stage_work(f, args)}
    assert rows["train"][0] == 46_000 and rows["invert"][1] == 3.0 + 51 * 2.0
    assert hours(7200e12, 1e12) == "2.0 h" and hours(90e12, 1e12) == "2 min" and hours(5e12, 1e12) == "5 s"
    assert cpu_time(86400 * 400 * 1e9, 1e9) == "1.1 years" and cpu_time(86400 * 1e9, 1e9) == "24 h"
