"""BELM exactness per UNet dtype: float64 latents make the round trip exact with a half-precision UNet."""

import pytest
import torch

from spade_core.diffusion.inversion import invert, reconstruction_error, sample, teacher_maps


@pytest.mark.parametrize("unet_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_steps", [4, 10])
def test_float64_latents_make_half_precision_belm_exact(tiny_unet, latents_and_cond, unet_dtype, num_steps):
    unet = tiny_unet.to(unet_dtype)
    x0, cond = latents_and_cond
    pair = invert(unet, x0, cond, method="belm", num_steps=num_steps, latent_dtype=torch.float64)
    assert pair.dtype == torch.float64
    rec = sample(unet, pair, cond, method="belm", num_steps=num_steps, latent_dtype=torch.float64)
    assert rec.dtype == torch.float64
    assert float(reconstruction_error(x0, rec)) < 1e-12  # measured 2.6e-16 (4 steps), 4.1e-16 (10 steps)


def test_half_precision_unet_inputs_are_identical_both_ways_with_float64_latents(tiny_unet, latents_and_cond):
    """The mechanism: every UNet input of the sampling pass equals the inversion's, bit for bit."""
    unet = tiny_unet.to(torch.bfloat16)
    x0, cond = latents_and_cond
    seen: list[torch.Tensor] = []
    handle = unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        pair = invert(unet, x0, cond, method="belm", num_steps=6, latent_dtype=torch.float64)
        inverted, seen[:] = list(seen), []
        sample(unet, pair, cond, method="belm", num_steps=6, latent_dtype=torch.float64)
    finally:
        handle.remove()
    # inversion evaluates (x_0, t_1), (x_1, t_1) .. (x_5, t_5); sampling (x_5, t_5) .. (x_1, t_1)
    assert len(seen) == 5 and all(a.dtype == torch.bfloat16 for a in seen)
    for a, b in zip(inverted[1:], reversed(seen)):
        assert torch.equal(a, b)


def test_latent_dtype_in_teacher_maps_and_bad_values(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    out = teacher_maps(tiny_unet, x0, cond, method="belm", num_steps=3, latent_dtype=torch.float64)
    assert out.noise.dtype == torch.float64 and out.maps.dtype == torch.float32 and out.unet_calls == 3
    assert invert(tiny_unet, x0, cond, method="ddim", num_steps=2).dtype == torch.float32  # default unchanged
    with pytest.raises(ValueError, match="latent_dtype"):
        invert(tiny_unet, x0, cond, method="belm", num_steps=2, latent_dtype=torch.bfloat16)
