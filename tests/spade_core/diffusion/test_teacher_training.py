"""Epsilon-prediction training of a tiny UNet + text encoder: schedule, determinism, loss goes down."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from spade_core.diffusion.models import TINY_UNET_CONFIG
from spade_core.diffusion.schedulers import SD_SCHEDULER_CONFIG
from spade_core.diffusion.teacher_training import alphas_cumprod, diffusion_loss, train_teacher

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            max_position_embeddings=8, bos_token_id=62, eos_token_id=63, pad_token_id=63)


def _models(seed: int = 0) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG), CLIPTextModel(CLIPTextConfig(**TEXT))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 4, 8, 8, generator=g), torch.randint(0, 62, (4, 8), generator=g)


def _eval_loss(unet, text, latents, ids) -> float:
    abar = alphas_cumprod()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(float(diffusion_loss(unet, text, latents, ids, abar, g)) for _ in range(4)) / 4


def test_alphas_cumprod_is_the_scheduler_schedule():
    abar = alphas_cumprod(SD_SCHEDULER_CONFIG)
    assert torch.allclose(abar, DDIMScheduler(**SD_SCHEDULER_CONFIG).alphas_cumprod.float())
    assert abar.shape == (1000,) and bool((abar[1:] < abar[:-1]).all())
    with pytest.raises(ValueError, match="prediction_type"):
        alphas_cumprod({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})


def test_training_lowers_the_loss_and_is_deterministic():
    latents, ids = _data()
    unet, text = _models()
    before = _eval_loss(unet, text, latents, ids)
    result = train_teacher(unet, text, latents, ids, steps=30, lr=2e-3, batch_size=4, seed=0, warmup=5)
    after = _eval_loss(unet, text, latents, ids)
    assert result.steps == 30 and len(result.losses) == 30 and not unet.training
    assert after < 0.8 * before, (before, after)
    unet2, text2 = _models()
    again = train_teacher(unet2, text2, latents, ids, steps=3, lr=2e-3, batch_size=4, seed=0, warmup=5)
    assert again.losses == pytest.approx(result.losses[:3], rel=1e-4)


def test_bad_arguments_raise():
    latents, ids = _data()
    unet, text = _models()
    with pytest.raises(ValueError, match="steps"):
        train_teacher(unet, text, latents, ids, steps=0)
    with pytest.raises(ValueError, match="same non-zero count"):
        train_teacher(unet, text, latents, ids[:2], steps=1)
    with pytest.raises(ValueError, match="latents must be"):
        diffusion_loss(unet, text, latents[0], ids, alphas_cumprod())
