"""The loss that trains a text-to-image diffusion teacher from scratch: standard epsilon prediction.

For clean latents ``x_0`` (the VAE latents times the scaling factor, exactly what :func:`encode_images` returns
and what inversion starts from), a timestep ``t`` uniform in ``[0, num_train_timesteps)`` and Gaussian noise
``eps``, the UNet conditioned on the text encoder's last hidden state of the caption predicts ``eps`` from
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the loss is the mean squared error. ``abar`` comes from the
scheduler config (:func:`~spade_core.diffusion.schedulers.alphas_cumprod_from_config` with ``epsilon_only``,
so training and inversion share one schedule). Tensors in, tensors out: the training loop (batches, optimiser,
learning-rate schedule) is the caller's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def diffusion_loss(unet: nn.Module, text_encoder: nn.Module, latents: Tensor, token_ids: Tensor,
                   abar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Epsilon-prediction MSE of one batch.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        text_encoder: a transformers ``CLIPTextModel`` (``[B, T]`` ids -> last hidden state ``[B, T, D]``).
        latents: [B, C, h, w] clean latents ``x_0``.
        token_ids: [B, T] long caption ids.
        abar: [num_train_timesteps] cumulative alphas (``alphas_cumprod_from_config(..., epsilon_only=True)``).
        generator: CPU generator for timesteps and noise (reproducible batches).

    Returns:
        scalar loss (with graph).
    """
    if latents.ndim != 4 or token_ids.ndim != 2 or latents.shape[0] != token_ids.shape[0]:
        raise ValueError(f"latents must be [B, C, h, w] and token_ids [B, T] with the same B, got "
                         f"{tuple(latents.shape)} and {tuple(token_ids.shape)}")
    b, device = latents.shape[0], latents.device
    t = torch.randint(0, abar.numel(), (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    a = abar[t].to(device).view(b, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    cond = text_encoder(token_ids.to(device))[0]
    pred = unet(noisy, t.to(device), encoder_hidden_states=cond).sample
    return F.mse_loss(pred.float(), noise)
