"""The embedded teacher's training loop on the engine: schedule, determinism, loss goes down, bad arguments."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipeline.teacher_training import mean_loss, train_teacher, warmup_cosine
from spade_core.diffusion.models import TINY_UNET_CONFIG
from spade_core.diffusion.schedulers import alphas_cumprod_from_config
from spade_core.diffusion.teacher_training import diffusion_loss

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            max_position_embeddings=8, bos_token_id=62, eos_token_id=63, pad_token_id=63)


def _models(seed: int = 0) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG), CLIPTextModel(CLIPTextConfig(**TEXT))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 4, 8, 8, generator=g), torch.randint(0, 62, (4, 8), generator=g)


def _eval_loss(unet, text, latents, ids) -> float:
    abar = alphas_cumprod_from_config()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(float(diffusion_loss(unet, text, latents, ids, abar, g)) for _ in range(4)) / 4


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.1)


def test_training_lowers_the_loss_and_is_deterministic():
    latents, ids = _data()
    unet, text = _models()
    before = _eval_loss(unet, text, latents, ids)
    result = train_teacher(unet, text, latents, ids, steps=30, lr=2e-3, batch_size=4, seed=0, warmup=5)
    after = _eval_loss(unet, text, latents, ids)
    assert result.step == 30 and len(result.history) == 30 and not unet.training and not text.training
    assert after < 0.8 * before, (before, after)
    assert mean_loss(result, last=5) < mean_loss(result, first=5)
    unet2, text2 = _models()
    again = train_teacher(unet2, text2, latents, ids, steps=3, lr=2e-3, batch_size=4, seed=0, warmup=5)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in result.history[:3]]
    assert [r["step"] for r in again.history] == [1, 2, 3]


def test_bad_arguments_raise():
    latents, ids = _data()
    unet, text = _models()
    with pytest.raises(ValueError, match="steps"):
        train_teacher(unet, text, latents, ids, steps=0)
    with pytest.raises(ValueError, match="same non-zero count"):
        train_teacher(unet, text, latents, ids[:2], steps=1)
