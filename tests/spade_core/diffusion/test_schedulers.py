"""Grid convention and step maths against diffusers' DDIMScheduler / DDIMInverseScheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from spade_core.diffusion.schedulers import (
    SD_SCHEDULER_CONFIG,
    belm_invert_step,
    belm_sample_step,
    ddim_step,
    grid_from_config,
    make_grid,
)


@pytest.mark.parametrize("num_steps", [1, 10, 50, 7])
def test_grid_matches_diffusers_timesteps(num_steps):
    grid = grid_from_config(None, num_steps)
    ddim, inv = DDIMScheduler(**SD_SCHEDULER_CONFIG), DDIMInverseScheduler(**SD_SCHEDULER_CONFIG)
    ddim.set_timesteps(num_steps)
    inv.set_timesteps(num_steps)
    assert torch.equal(grid.timesteps, inv.timesteps.long())
    assert torch.equal(grid.timesteps.flip(0), ddim.timesteps.long())
    assert grid.abar[0] == 1.0 and grid.lam[0] == 0.0
    assert torch.allclose(grid.abar[1:], ddim.alphas_cumprod.double()[grid.timesteps])
    assert bool((grid.lam[1:] > grid.lam[:-1]).all())


def test_grid_rejects_bad_steps():
    ac = DDIMScheduler(**SD_SCHEDULER_CONFIG).alphas_cumprod
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            make_grid(ac, bad)
    grid = make_grid(ac, 10)
    with pytest.raises(ValueError, match="grid point"):
        grid.timestep(0)
    with pytest.raises(ValueError, match="O-BELM"):
        belm_sample_step(torch.zeros(1), torch.zeros(1), torch.zeros(1), grid, 10)


def test_ddim_step_matches_diffusers_both_directions():
    g = torch.Generator().manual_seed(0)
    grid = grid_from_config(None, 10)
    ddim, inv = DDIMScheduler(**SD_SCHEDULER_CONFIG), DDIMInverseScheduler(**SD_SCHEDULER_CONFIG)
    ddim.set_timesteps(10)
    inv.set_timesteps(10)
    for i in range(1, 11):
        x, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        t = grid.timestep(i)
        ref_inv = inv.step(e, t, x).prev_sample  # from point i-1 to the target timestep t_i
        ref_ddim = ddim.step(e, t, x).prev_sample  # from point i to i-1
        assert torch.allclose(ddim_step(x, e, grid, i - 1, i), ref_inv, rtol=1e-5, atol=1e-5)
        assert torch.allclose(ddim_step(x, e, grid, i, i - 1), ref_ddim, rtol=1e-5, atol=1e-5)


def test_belm_steps_are_inverse_in_float64():
    g = torch.Generator().manual_seed(0)
    grid = grid_from_config(None, 10)
    for i in range(1, 10):
        x_prev, x_cur, e = (torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
        x_next = belm_invert_step(x_prev, x_cur, e, grid, i)
        back = belm_sample_step(x_next, x_cur, e, grid, i)
        assert (back - x_prev).abs().max() <= 1e-12 * x_prev.abs().max()


def test_belm_is_second_order_exact_for_linear_y():
    """y = x / a linear in lam with eps = dy/dlam constant: O-BELM (and DDIM) reproduce it exactly."""
    grid = grid_from_config(None, 10)
    y0, e = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-1.7], dtype=torch.float64)
    x = [grid.a[i] * (y0 + grid.lam[i] * e) for i in range(11)]
    for i in range(1, 10):
        assert torch.allclose(belm_sample_step(x[i + 1], x[i], e, grid, i), x[i - 1], atol=1e-12)
        assert torch.allclose(ddim_step(x[i], e, grid, i, i - 1), x[i - 1], atol=1e-12)


def test_updates_keep_latent_dtype():
    grid = grid_from_config(None, 4)
    x = torch.randn(1, 4, 4, 4)
    e = torch.randn(1, 4, 4, 4).to(torch.bfloat16)
    assert ddim_step(x, e, grid, 1, 2).dtype == torch.float32
    assert belm_invert_step(x, x, e, grid, 1).dtype == torch.float32
