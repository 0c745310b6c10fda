"""Batched DDIM / O-BELM inversion and sampling, and the teacher's cross-attention maps.

Grid and step maths: see :mod:`spade_core.diffusion.schedulers` (``x_0`` is the clean latent, ``x_N`` the noise).
UNet calls made by each direction (``e_k = eps(., t_k)``):

========  =====================================================  ================================================
method    invert (latents ``x_0`` -> noise)                       sample (noise -> ``x_0``)
========  =====================================================  ================================================
ddim      ``(x_{i-1}, t_i)`` for i = 1..N (as diffusers'          ``(x_i, t_i)`` for i = N..1 (``DDIMScheduler``,
          ``DDIMInverseScheduler`` pipelines); returns ``x_N``    eta = 0)
belm      ``(x_0, t_1)`` (DDIM step to ``x_1``), then             from the pair: ``(x_i, t_i)`` for i = N-1..1;
          ``(x_i, t_i)`` for i = 1..N-1 (O-BELM);                from ``x_N`` alone: first a DDIM step with
          returns the pair ``[B, 2, C, h, w] = (x_N, x_{N-1})``   ``(x_N, t_N)`` (not exact)
========  =====================================================  ================================================

Teacher maps ("the final denoising step"). ``capture_step = k`` records the cross-attention of the UNet call
``eps(x_k, t_k)`` at the point ``x_k`` of the inversion trajectory, i.e. the call with which an exact
regeneration takes its denoising step ``k -> k-1``; the default ``k = 1`` is the final denoising step. For BELM
with the prompt as ``cond``, regeneration from the pair evaluates exactly the points and timesteps the
inversion evaluated (up to round-off), so for ``1 <= k <= N-1`` the map is recorded *during* inversion at no
extra cost: N UNet calls instead of N + (N-1). DDIM inversion evaluates ``(x_{k-1}, t_k)`` instead, so DDIM (and
BELM with ``k = N``) makes one extra UNet call at ``(x_k, t_k)``; ``k = N`` is ``unet(x_T, t_N, prompt)``.
``teacher_maps(..., regenerate=True)`` runs the explicit regeneration pass instead (sampling from the inverted
noise, recording its call at ``t_k``), which for DDIM sees the drifted regenerated latent.

The UNet runs in its own dtype (inputs cast to ``unet.dtype``); latents and updates run in ``latent_dtype``
(default float32; float64 latents stay float64). ``scheduler_config`` is a diffusers scheduler config
(``None``: SD's); its ``prediction_type`` (``epsilon`` | ``v_prediction`` | ``sample``) is converted to ``eps``
at the evaluated timestep. Classifier-free guidance is not applied (guidance scale 1).

Exactness per dtype (docs/INVERSION.md §6). A BELM round trip is exact only if sampling feeds the UNet the very
inputs the inversion fed it. With a bfloat16 / float16 UNet and float32 latents it does not: the float32
round-off of the retraced latents (~1e-7, amplified by the recurrence) moves some elements across a half-
precision rounding boundary when they are cast to the UNet dtype, the UNet output changes by a half-precision
ulp there, and the recurrence amplifies that. Measured ``||x0_rec - x0|| / ||x0||`` (tiny random UNet, batch 4,
4 / 10 / 50 steps, CPU): float32 UNet 3.8e-7 / 1.4e-6 / 9.7e-6; bfloat16 UNet 2.8e-3 / 1.9e-3 / 4.7e-2; float16
UNet 6.1e-4 / 1.0e-3 / 7.2e-3. ``latent_dtype=torch.float64`` removes it at no UNet cost (the UNet still runs in
its own dtype; only the element-wise updates are float64): 2.6e-16 / 4.1e-16 / 1.9e-15 for every UNet dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attention import AttentionCapture
from .schedulers import (
    SD_SCHEDULER_CONFIG,
    TimestepGrid,
    belm_invert_step,
    belm_sample_step,
    ddim_step,
    grid_from_config,
)

METHODS = ("ddim", "belm")


class _Eps:
    """``eps(x, t_k)`` of a UNet for one batch: casts, prediction-type conversion, call counting, capture."""

    def __init__(self, unet: nn.Module, cond: Tensor, batch: int, grid: TimestepGrid, prediction_type: str,
                 capture: AttentionCapture | None, capture_step: int | None):
        if cond.ndim != 3 or cond.shape[0] not in (1, batch):
            raise ValueError(f"cond must be [B, T, D] or [1, T, D] with B={batch}, got {tuple(cond.shape)}")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported scheduler prediction_type {prediction_type!r}")
        self.dtype = getattr(unet, "dtype", None) or next(unet.parameters()).dtype
        self.unet, self.grid, self.prediction_type = unet, grid, prediction_type
        self.cond = cond.to(self.dtype).expand(batch, -1, -1)
        self.capture, self.capture_step, self.calls = capture, capture_step, 0

    def __call__(self, x: Tensor, k: int, record: bool = False) -> Tensor:
        t = torch.tensor(self.grid.timestep(k), device=x.device)
        self.calls += 1
        if record and self.capture is not None:
            with self.capture.recording():
                out = self.unet(x.to(self.dtype), t, encoder_hidden_states=self.cond).sample
        else:
            out = self.unet(x.to(self.dtype), t, encoder_hidden_states=self.cond).sample
        out = out.to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        a, s = float(self.grid.a[k]), float(self.grid.s[k])
        if self.prediction_type == "v_prediction":
            return a * out + s * x
        return (x - a * out) / s

    def wants(self, k: int) -> bool:
        return self.capture is not None and self.capture_step == k


def _setup(unet: nn.Module, x: Tensor, cond: Tensor, method: str, num_steps: int, scheduler_config: Any,
           capture: AttentionCapture | None, capture_step: int,
           latent_dtype: torch.dtype | None = None) -> tuple[Tensor, TimestepGrid, _Eps]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    config = SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config
    grid = grid_from_config(config, num_steps)
    if capture is not None and not 1 <= capture_step <= num_steps:
        raise ValueError(f"capture_step must be in [1, num_steps={num_steps}], got {capture_step}")
    if latent_dtype is not None and latent_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"latent_dtype must be torch.float32 or torch.float64, got {latent_dtype}")
    x = x.to(torch.promote_types(x.dtype, latent_dtype or torch.float32))
    eps = _Eps(unet, cond.to(x.device), x.shape[0], grid, config.get("prediction_type", "epsilon"), capture,
               capture_step)
    return x, grid, eps


@torch.no_grad()
def _invert(unet, latents, cond, method, num_steps, scheduler_config, capture, capture_step,
            latent_dtype=None) -> tuple[Tensor, int]:
    if latents.ndim != 4:
        raise ValueError(f"latents must be [B, C, h, w], got {tuple(latents.shape)}")
    x, grid, eps = _setup(unet, latents, cond, method, num_steps, scheduler_config, capture, capture_step,
                          latent_dtype)
    n = grid.num_steps
    if method == "ddim":
        for i in range(1, n + 1):
            x = ddim_step(x, eps(x, i), grid, i - 1, i)
            if eps.wants(i):
                eps(x, i, record=True)
        return x, eps.calls
    x_prev, x_cur = x, ddim_step(x, eps(x, 1), grid, 0, 1)
    for i in range(1, n):
        x_prev, x_cur = x_cur, belm_invert_step(x_prev, x_cur, eps(x_cur, i, record=eps.wants(i)), grid, i)
    if eps.wants(n):
        eps(x_cur, n, record=True)
    return torch.stack([x_cur, x_prev], dim=1), eps.calls


@torch.no_grad()
def _sample(unet, noise, cond, method, num_steps, scheduler_config, capture, capture_step,
            latent_dtype=None) -> tuple[Tensor, int]:
    pair = method == "belm" and noise.ndim == 5
    if not (noise.ndim == 4 or (pair and noise.shape[1] == 2)):
        want = "[B, 2, C, h, w] (x_N, x_{N-1}) or [B, C, h, w]" if method == "belm" else "[B, C, h, w]"
        raise ValueError(f"noise must be {want} for method={method!r}, got {tuple(noise.shape)}")
    x, grid, eps = _setup(unet, noise, cond, method, num_steps, scheduler_config, capture, capture_step,
                          latent_dtype)
    n = grid.num_steps
    if method == "ddim":
        for i in range(n, 0, -1):
            x = ddim_step(x, eps(x, i, record=eps.wants(i)), grid, i, i - 1)
        return x, eps.calls
    if pair:
        if eps.wants(n):
            raise ValueError("sampling from the BELM pair makes no UNet call at t_N: capture_step must be < N")
        x_next, x_cur = x[:, 0], x[:, 1]
    else:
        x_next, x_cur = x, ddim_step(x, eps(x, n, record=eps.wants(n)), grid, n, n - 1)
    for i in range(n - 1, 0, -1):
        x_next, x_cur = x_cur, belm_sample_step(x_next, x_cur, eps(x_cur, i, record=eps.wants(i)), grid, i)
    return x_cur, eps.calls


def invert(unet: nn.Module, latents: Tensor, cond: Tensor, *, method: str, num_steps: int,
           scheduler_config: Any = None, capture: AttentionCapture | None = None, capture_step: int = 1,
           latent_dtype: torch.dtype | None = None) -> Tensor:
    """Invert clean latents ``x_0`` [B, C, h, w] to noise.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (any dtype).
        latents: [B, C, h, w] VAE latents (times the scaling factor).
        cond: [B, T, D] (or [1, T, D]) ``encoder_hidden_states``.
        method: ``"ddim"`` or ``"belm"``.
        num_steps: N, inference steps of the grid.
        scheduler_config: diffusers scheduler config (``None``: Stable Diffusion's).
        capture: if given, record its maps at the UNet call ``eps(x_k, t_k)``, ``k = capture_step`` (module doc).
        capture_step: grid point k in [1, N] whose call is recorded (1: final denoising step).
        latent_dtype: dtype of the latents and updates (None: float32, or float64 for float64 input);
            ``torch.float64`` makes a BELM round trip exact with a half-precision UNet (module doc).

    Returns:
        DDIM: ``x_N`` [B, C, h, w]; BELM: ``(x_N, x_{N-1})`` stacked as [B, 2, C, h, w]. float32 (or float64).
    """
    return _invert(unet, latents, cond, method, num_steps, scheduler_config, capture, capture_step,
                   latent_dtype)[0]


def sample(unet: nn.Module, noise: Tensor, cond: Tensor, *, method: str, num_steps: int,
           scheduler_config: Any = None, capture: AttentionCapture | None = None, capture_step: int = 1,
           latent_dtype: torch.dtype | None = None) -> Tensor:
    """Denoise to ``x_0`` [B, C, h, w]: DDIM (eta = 0) from ``x_N``, BELM from the pair [B, 2, C, h, w] that
    :func:`invert` returns (exact up to round-off) or from ``x_N`` alone [B, C, h, w] (DDIM first step).
    With ``capture``, its maps are recorded at the call ``eps(x_k, t_k)``, ``k = capture_step`` (default: last).
    ``latent_dtype`` as in :func:`invert` (an exact round trip needs the pair in float64 both ways)."""
    return _sample(unet, noise, cond, method, num_steps, scheduler_config, capture, capture_step,
                   latent_dtype)[0]


@dataclass
class TeacherMaps:
    """``noise``: what :func:`invert` returns; ``maps``: [B, T, ha, wa] float32; ``unet_calls``: per batch."""

    noise: Tensor
    maps: Tensor
    unet_calls: int


def teacher_maps(unet: nn.Module, latents: Tensor, cond: Tensor, *, method: str, num_steps: int,
                 capture: AttentionCapture | None = None, regenerate: bool = False, capture_step: int = 1,
                 size: tuple[int, int] | None = None, scheduler_config: Any = None,
                 latent_dtype: torch.dtype | None = None) -> TeacherMaps:
    """Invert ``latents`` and return the teacher's cross-attention maps at denoising step ``capture_step``.

    ``regenerate=False``: maps recorded during inversion (BELM: N UNet calls; DDIM: N + 1).
    ``regenerate=True``: invert, then the explicit regeneration pass records them (BELM 2N - 1, DDIM 2N calls).
    ``capture`` defaults to a temporary :class:`AttentionCapture` over all ``attn2`` layers (removed after);
    ``size`` is passed to :meth:`AttentionCapture.maps`; ``latent_dtype`` as in :func:`invert`.
    """
    own = capture is None
    capture = AttentionCapture(unet) if own else capture
    try:
        if regenerate:
            noise, calls = _invert(unet, latents, cond, method, num_steps, scheduler_config, None, capture_step,
                                   latent_dtype)
            calls += _sample(unet, noise, cond, method, num_steps, scheduler_config, capture, capture_step,
                             latent_dtype)[1]
        else:
            noise, calls = _invert(unet, latents, cond, method, num_steps, scheduler_config, capture, capture_step,
                                   latent_dtype)
        maps = capture.maps(size)
    finally:
        if own:
            capture.remove()
    return TeacherMaps(noise=noise, maps=maps, unet_calls=calls)


def reconstruction_error(x0: Tensor, x0_rec: Tensor, per_sample: bool = False) -> Tensor:
    """``||x0_rec - x0|| / ||x0||`` in float64: a scalar, or [B] with ``per_sample``."""
    if x0.shape != x0_rec.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x0_rec {tuple(x0_rec.shape)} differ in shape")
    d, r = (x0_rec.double() - x0.double()).flatten(1), x0.double().flatten(1)
    if per_sample:
        return d.norm(dim=1) / r.norm(dim=1)
    return d.norm() / r.norm()
