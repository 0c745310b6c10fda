"""Shared fixtures: a random tiny UNet and the tiny open_clip model built into a temporary folder."""

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from spade_core.calibration import build_tiny_clip, load_clip

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)


def make_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


@pytest.fixture
def unet() -> UNet2DConditionModel:
    return make_unet()


@pytest.fixture
def unet_factory():
    """``unet_factory(seed)`` builds a fresh tiny UNet with the given weights seed."""
    return make_unet


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_checkpoint):
    return load_clip(str(tiny_clip_checkpoint.with_suffix(".json")), tiny_clip_checkpoint)


@pytest.fixture
def unet_inputs():
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    cond = torch.randn(2, 7, 32, generator=g)
    return sample, torch.tensor([10, 10]), cond
