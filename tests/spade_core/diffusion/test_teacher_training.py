"""Epsilon-prediction loss of the tiny UNet: the schedule it uses, determinism, gradients, bad arguments.

The training loop itself is the pipeline's (``tests/pipeline/test_teacher_training.py``)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from spade_core.diffusion.schedulers import SD_SCHEDULER_CONFIG, alphas_cumprod_from_config
from spade_core.diffusion.teacher_training import diffusion_loss


class _TextEncoder(nn.Module):
    """Token ids [B, T] -> (last hidden state [B, T, 32],), the part of ``CLIPTextModel`` the loss uses."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 32)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.embed(ids),)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 64, (2, 6), generator=g)


def test_training_schedule_is_the_scheduler_schedule():
    abar = alphas_cumprod_from_config(SD_SCHEDULER_CONFIG, epsilon_only=True)
    assert torch.equal(abar, DDIMScheduler(**SD_SCHEDULER_CONFIG).alphas_cumprod.float())
    assert abar.dtype == torch.float32 and abar.shape == (1000,) and bool((abar[1:] < abar[:-1]).all())
    v_pred = {**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}
    with pytest.raises(ValueError, match="prediction_type"):
        alphas_cumprod_from_config(v_pred, epsilon_only=True)
    assert torch.equal(alphas_cumprod_from_config(v_pred), abar)  # inversion's use: no check


def test_loss_is_seeded_and_reaches_both_models(tiny_unet):
    torch.manual_seed(0)
    text = _TextEncoder()
    latents, ids = _batch()
    abar = alphas_cumprod_from_config(epsilon_only=True)
    losses = [diffusion_loss(tiny_unet, text, latents, ids, abar, torch.Generator().manual_seed(3)) for _ in "ab"]
    assert losses[0].ndim == 0 and float(losses[0].detach()) > 0 and torch.equal(losses[0], losses[1])
    losses[0].backward()
    assert text.embed.weight.grad is not None and tiny_unet.conv_in.weight.grad is not None


def test_bad_arguments_raise(tiny_unet):
    latents, ids = _batch()
    with pytest.raises(ValueError, match="latents must be"):
        diffusion_loss(tiny_unet, _TextEncoder(), latents[0], ids, alphas_cumprod_from_config())
