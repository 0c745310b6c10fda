"""Train a text-to-image diffusion teacher from scratch: the standard epsilon-prediction loss.

For clean latents ``x_0`` (the VAE latents times the scaling factor, exactly what :func:`encode_images` returns
and what inversion starts from), a timestep ``t`` uniform in ``[0, num_train_timesteps)`` and Gaussian noise
``eps``, the UNet conditioned on the text encoder's last hidden state of the caption predicts ``eps`` from
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the loss is the mean squared error. ``abar`` comes from the
scheduler config (diffusers' ``DDIMScheduler`` built from it, so training and inversion share one schedule).
The UNet and the text encoder are trained jointly with AdamW. Tensors in, tensors out: data preparation is the
caller's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedulers import SD_SCHEDULER_CONFIG


def alphas_cumprod(scheduler_config: dict[str, Any] | None = None) -> Tensor:
    """``abar_t`` [num_train_timesteps] float32 of a diffusers scheduler config (``None``: Stable Diffusion's)."""
    from diffusers import DDIMScheduler

    config = dict(SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"scheduler_config prediction_type must be 'epsilon', got {config['prediction_type']!r}")
    return DDIMScheduler(**config).alphas_cumprod.float()


def diffusion_loss(unet: nn.Module, text_encoder: nn.Module, latents: Tensor, token_ids: Tensor,
                   abar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Epsilon-prediction MSE of one batch.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        text_encoder: a transformers ``CLIPTextModel`` (``[B, T]`` ids -> last hidden state ``[B, T, D]``).
        latents: [B, C, h, w] clean latents ``x_0``.
        token_ids: [B, T] long caption ids.
        abar: [num_train_timesteps] cumulative alphas (:func:`alphas_cumprod`).
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


@dataclass
class TrainResult:
    """``losses``: per-step loss; ``seconds``: wall time of the loop; ``steps``: steps taken."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    def mean_loss(self, first: int | None = None, last: int | None = None) -> float:
        """Mean of the first ``first`` or the last ``last`` losses (all if neither)."""
        xs = self.losses[:first] if first else self.losses[-last:] if last else self.losses
        return float(sum(xs) / max(len(xs), 1))


def train_teacher(unet: nn.Module, text_encoder: nn.Module, latents: Tensor, token_ids: Tensor, *, steps: int,
                  lr: float = 1e-3, batch_size: int = 32, seed: int = 0, weight_decay: float = 0.01,
                  warmup: int = 50, scheduler_config: dict[str, Any] | None = None,
                  log_every: int = 0, log: Any = print) -> TrainResult:
    """Train ``unet`` and ``text_encoder`` in place on (latent, caption) pairs; both are left in eval mode.

    Args:
        latents: [N, C, h, w] clean latents (on the models' device).
        token_ids: [N, T] long caption ids.
        steps: optimisation steps (batches of ``batch_size`` drawn without replacement, reshuffled per epoch).
        lr: peak AdamW learning rate (linear warm-up over ``warmup`` steps, then cosine decay to 0.1 lr).
        seed: seeds the shuffling, timesteps and noise (the models' init is the caller's).
        scheduler_config: diffusers scheduler config of the noise schedule (``None``: Stable Diffusion's).
        log_every: print a running loss every that many steps (0: never).
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    n = latents.shape[0]
    if n != token_ids.shape[0] or n == 0:
        raise ValueError(f"latents ({n}) and token_ids ({token_ids.shape[0]}) must hold the same non-zero count")
    abar = alphas_cumprod(scheduler_config)
    g = torch.Generator().manual_seed(seed)
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    unet.train()
    text_encoder.train()
    result, start, order = TrainResult(), time.perf_counter(), torch.empty(0, dtype=torch.long)
    for step in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=g)])
        idx, order = order[:batch_size], order[batch_size:]
        loss = diffusion_loss(unet, text_encoder, latents[idx], token_ids[idx], abar, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        result.losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}  loss {result.mean_loss(last=log_every):.4f}  "
                f"{time.perf_counter() - start:.0f}s")
    result.seconds, result.steps = time.perf_counter() - start, steps
    unet.eval()
    text_encoder.eval()
    return result
