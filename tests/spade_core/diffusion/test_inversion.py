"""Batched DDIM / O-BELM inversion and sampling on the random tiny UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from spade_core.diffusion import SD_SCHEDULER_CONFIG, invert, reconstruction_error, sample
from spade_core.diffusion.schedulers import ddim_step, grid_from_config


def _diffusers_invert_then_sample(unet, x0, cond, num_steps):
    inv, ddim = DDIMInverseScheduler(**SD_SCHEDULER_CONFIG), DDIMScheduler(**SD_SCHEDULER_CONFIG)
    inv.set_timesteps(num_steps)
    ddim.set_timesteps(num_steps)
    x, traj = x0, [x0]
    with torch.no_grad():
        for t in inv.timesteps:  # ascending targets; UNet at the current latent, target timestep
            x = inv.step(unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
            traj.append(x)
        noise, y = x, x
        for t in ddim.timesteps:
            y = ddim.step(unet(y, t, encoder_hidden_states=cond).sample, t, y).prev_sample
    return traj, noise, y


def test_ddim_matches_diffusers_step_for_step(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    traj, noise_ref, x0_ref = _diffusers_invert_then_sample(tiny_unet, x0, cond, 5)
    ours = invert(tiny_unet, x0, cond, method="ddim", num_steps=5)
    assert torch.allclose(ours, noise_ref, rtol=1e-4, atol=1e-5)
    grid = grid_from_config(None, 5)  # each step on diffusers' own trajectory
    with torch.no_grad():
        for i in range(1, 6):
            e = tiny_unet(traj[i - 1], grid.timestep(i), encoder_hidden_states=cond).sample
            assert torch.allclose(ddim_step(traj[i - 1], e, grid, i - 1, i), traj[i], rtol=1e-5, atol=1e-5)
    ours_x0 = sample(tiny_unet, noise_ref, cond, method="ddim", num_steps=5)
    assert torch.allclose(ours_x0, x0_ref, rtol=1e-4, atol=1e-4)
    assert reconstruction_error(x0, ours_x0) > 0.1  # DDIM is not exact on a random UNet


def test_belm_round_trip_float32(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    pair = invert(tiny_unet, x0, cond, method="belm", num_steps=10)
    assert pair.shape == (2, 2, 4, 16, 16) and pair.dtype == torch.float32
    rec = sample(tiny_unet, pair, cond, method="belm", num_steps=10)
    assert float(reconstruction_error(x0, rec)) <= 1e-5
    # from x_N alone (DDIM first step) it is not exact: the pair is needed
    assert float(reconstruction_error(x0, sample(tiny_unet, pair[:, 0], cond, method="belm", num_steps=10))) > 1e-3


def test_belm_round_trip_float64(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    unet = tiny_unet.double()
    x0, cond = x0[:1].double(), cond[:1].double()
    pair = invert(unet, x0, cond, method="belm", num_steps=10)
    assert pair.dtype == torch.float64
    rec = sample(unet, pair, cond, method="belm", num_steps=10)
    assert float(reconstruction_error(x0, rec)) <= 1e-12


@pytest.mark.parametrize("method", ["ddim", "belm"])
def test_batch_of_four_equals_four_singles(tiny_unet, method):
    """Float64, so that BELM's amplification of matmul round-off (batched vs single kernels) stays invisible."""
    g = torch.Generator().manual_seed(3)
    unet = tiny_unet.double()
    x0 = torch.randn(4, 4, 16, 16, generator=g, dtype=torch.float64)
    cond = torch.randn(4, 7, 32, generator=g, dtype=torch.float64)
    batched = invert(unet, x0, cond, method=method, num_steps=4)
    singles = torch.cat([invert(unet, x0[b : b + 1], cond[b : b + 1], method=method, num_steps=4) for b in range(4)])
    assert float(reconstruction_error(singles, batched)) <= 1e-10
    # and the images do not all come out the same (the test would not see a mix-up otherwise)
    assert (batched[0] - batched[1]).abs().max() > 1e-2


def test_low_precision_unet_keeps_fp32_latents(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    unet = tiny_unet.to(torch.bfloat16)
    pair = invert(unet, x0, cond, method="belm", num_steps=4)
    assert pair.dtype == torch.float32
    rec = sample(unet, pair, cond, method="belm", num_steps=4)
    assert rec.dtype == torch.float32 and torch.isfinite(rec).all()


def test_broadcast_cond_and_bad_input(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    a = invert(tiny_unet, x0, cond[:1], method="ddim", num_steps=2)
    b = invert(tiny_unet, x0, cond[:1].expand(2, -1, -1), method="ddim", num_steps=2)
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="method"):
        invert(tiny_unet, x0, cond, method="edict", num_steps=2)
    with pytest.raises(ValueError, match="method"):
        sample(tiny_unet, x0, cond, method="DDIM", num_steps=2)
    with pytest.raises(ValueError, match="cond"):
        invert(tiny_unet, x0, torch.zeros(3, 7, 32), method="ddim", num_steps=2)
    with pytest.raises(ValueError, match="latents"):
        invert(tiny_unet, x0[0], cond, method="ddim", num_steps=2)
    with pytest.raises(ValueError, match="noise"):
        sample(tiny_unet, torch.zeros(2, 2, 4, 16, 16), cond, method="ddim", num_steps=2)


def test_reconstruction_error():
    x = torch.ones(2, 3)
    y = x.clone()
    y[1] += 1.0
    assert float(reconstruction_error(x, x)) == 0.0
    assert torch.allclose(reconstruction_error(x, y, per_sample=True), torch.tensor([0.0, 3**0.5 / 3**0.5],
                                                                                   dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        reconstruction_error(x, y[:1])
