"""DDIM and O-BELM step maths on one shared timestep grid.

Grid convention (the one used everywhere in ``spade_core.diffusion``)
---------------------------------------------------------------------
diffusers-compatible ``leading`` spacing with ``steps_offset`` (1 for Stable Diffusion) and
``set_alpha_to_one=True``, so that DDIM here matches ``DDIMScheduler`` / ``DDIMInverseScheduler`` step for step::

    grid point   i = 0        1          2            ...   N
    timestep     (clean)      off        off + r            off + (N-1) r      r = T // N  (T = 1000)
    abar         1            abar[t_1]  abar[t_2]          abar[t_N]

``t_0`` is the clean end (the VAE latent itself, ``abar_0 = 1``, ``lam_0 = 0``); ``t_1 .. t_N`` are the N
inference timesteps in ascending order (for N = 50: 1, 21, ..., 981). With
``a_i = sqrt(abar_i)``, ``s_i = sqrt(1 - abar_i)``, ``lam_i = s_i / a_i`` and ``h_i = lam_i - lam_{i-1}``:

* DDIM move from point i to point j with noise prediction ``e``:
  ``x_j = a_j * (x_i - s_i e) / a_i + s_j e`` (``y = x / a`` moves by ``(lam_j - lam_i) e``).
* O-BELM (Wang et al., NeurIPS 2024), network evaluated only at the middle point ``x_i``::

      x_{i-1} = c_next x_{i+1} + c_cur x_i + c_eps eps(x_i, t_i)
      c_next = (h_i / h_{i+1})^2 a_{i-1} / a_{i+1}
      c_cur  = (1 - (h_i / h_{i+1})^2) a_{i-1} / a_i
      c_eps  = -h_i (h_i + h_{i+1}) / h_{i+1} * a_{i-1}

  and the same relation solved for ``x_{i+1}`` (inversion), exact up to floating-point round-off.

Coefficients are computed in float64 from ``alphas_cumprod``; the update arithmetic runs in the latents' dtype
(float32, or float64 for float64 latents) whatever the UNet dtype: ``eps`` is cast to the latent dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: diffusers ``DDIMScheduler`` settings of Stable Diffusion 1.x/2.x, our default ``scheduler_config``.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class TimestepGrid:
    """Grid points ``0..N``; index ``i`` of ``abar``/``a``/``s``/``lam`` is grid point ``t_i``.

    Attributes:
        timesteps: [N] long, the UNet timesteps of grid points 1..N (ascending); ``timesteps[i - 1]`` is t_i.
        abar: [N + 1] float64, ``abar[0] = 1``.
        a, s, lam: [N + 1] float64, ``sqrt(abar)``, ``sqrt(1 - abar)``, ``s / a``.
    """

    timesteps: Tensor
    abar: Tensor
    a: Tensor
    s: Tensor
    lam: Tensor

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def timestep(self, i: int) -> int:
        """UNet timestep of grid point ``i`` (1..N)."""
        if not 1 <= i <= self.num_steps:
            raise ValueError(f"grid point i={i} has no UNet timestep (valid: 1..{self.num_steps})")
        return int(self.timesteps[i - 1])


def make_grid(alphas_cumprod: Tensor, num_steps: int, steps_offset: int = 1) -> TimestepGrid:
    """Build the ``leading``-spaced grid of ``num_steps`` steps over ``len(alphas_cumprod)`` train steps."""
    num_train = int(alphas_cumprod.numel())
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be an int in [1, {num_train}], got {num_steps!r}")
    ratio = num_train // num_steps
    timesteps = torch.arange(num_steps, dtype=torch.long) * ratio + steps_offset
    if int(timesteps[-1]) >= num_train or steps_offset < 0:
        raise ValueError(f"steps_offset={steps_offset} puts the last timestep outside [0, {num_train})")
    abar = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod.double().cpu()[timesteps]])
    a, s = abar.sqrt(), (1.0 - abar).sqrt()
    return TimestepGrid(timesteps=timesteps, abar=abar, a=a, s=s, lam=s / a)


def alphas_cumprod_from_config(scheduler_config: Any = None, *, epsilon_only: bool = False) -> Tensor:
    """``alphas_cumprod`` [T] (float32, as diffusers computes it) of a diffusers scheduler config (or SD's).

    ``epsilon_only``: raise ``ValueError`` unless the config's ``prediction_type`` is ``epsilon`` (what the
    teacher's training loss, :func:`~spade_core.diffusion.teacher_training.diffusion_loss`, assumes).
    """
    from diffusers import DDIMScheduler

    config = dict(SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if epsilon_only and config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"scheduler_config prediction_type must be 'epsilon', got {config['prediction_type']!r}")
    return DDIMScheduler.from_config(config).alphas_cumprod


def grid_from_config(scheduler_config: Any, num_steps: int) -> TimestepGrid:
    """The grid for a diffusers scheduler config (``None``: SD defaults); ``set_alpha_to_one`` is always on."""
    config = SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config
    return make_grid(alphas_cumprod_from_config(config), num_steps, int(config.get("steps_offset", 1)))


def ddim_step(x_i: Tensor, eps: Tensor, grid: TimestepGrid, i: int, j: int) -> Tensor:
    """Deterministic DDIM move of ``x_i`` [B, C, h, w] from grid point ``i`` to ``j`` with noise ``eps``."""
    a_i, s_i, a_j, s_j = (float(v) for v in (grid.a[i], grid.s[i], grid.a[j], grid.s[j]))
    eps = eps.to(x_i.dtype)
    x0 = (x_i - s_i * eps) / a_i
    return a_j * x0 + s_j * eps


def belm_coefficients(grid: TimestepGrid, i: int) -> tuple[float, float, float]:
    """``(c_next, c_cur, c_eps)`` of the O-BELM sampling relation around grid point ``i`` (1 <= i <= N-1)."""
    if not 1 <= i <= grid.num_steps - 1:
        raise ValueError(f"O-BELM needs 1 <= i <= N-1 = {grid.num_steps - 1}, got i={i}")
    a, lam = grid.a.tolist(), grid.lam.tolist()
    h_i, h_n = lam[i] - lam[i - 1], lam[i + 1] - lam[i]
    r2 = (h_i / h_n) ** 2
    c_next = r2 * a[i - 1] / a[i + 1]
    c_cur = (1.0 - r2) * a[i - 1] / a[i]
    c_eps = -h_i * (h_i + h_n) / h_n * a[i - 1]
    return c_next, c_cur, c_eps


def belm_sample_step(x_next: Tensor, x_cur: Tensor, eps_cur: Tensor, grid: TimestepGrid, i: int) -> Tensor:
    """O-BELM sampling: ``x_{i-1}`` from ``x_{i+1}`` (x_next), ``x_i`` (x_cur) and ``eps(x_i, t_i)``."""
    c_next, c_cur, c_eps = belm_coefficients(grid, i)
    return c_next * x_next + c_cur * x_cur + c_eps * eps_cur.to(x_cur.dtype)


def belm_invert_step(x_prev: Tensor, x_cur: Tensor, eps_cur: Tensor, grid: TimestepGrid, i: int) -> Tensor:
    """O-BELM inversion: ``x_{i+1}`` from ``x_{i-1}`` (x_prev), ``x_i`` (x_cur) and ``eps(x_i, t_i)``.

    The sampling relation solved for ``x_{i+1}``; ``belm_sample_step`` undoes it up to round-off.
    """
    c_next, c_cur, c_eps = belm_coefficients(grid, i)
    return (1.0 / c_next) * x_prev - (c_cur / c_next) * x_cur - (c_eps / c_next) * eps_cur.to(x_cur.dtype)
