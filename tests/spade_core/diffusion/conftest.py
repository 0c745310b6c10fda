"""Shared fixtures: a random tiny UNet (the tiny preset's config) and random conditioning, built in memory."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from spade_core.diffusion.models import TINY_UNET_CONFIG


@pytest.fixture(scope="session")
def tiny_unet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).state_dict()


@pytest.fixture
def tiny_unet(tiny_unet_state) -> UNet2DConditionModel:
    """A fresh fp32 tiny UNet (same weights every time; tests may install processors or adapters on it)."""
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    unet.load_state_dict(tiny_unet_state)
    return unet.eval()


@pytest.fixture
def latents_and_cond() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
