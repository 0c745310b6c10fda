"""Teacher maps at the final denoising step: recorded during BELM inversion == explicit regeneration."""

from __future__ import annotations

import pytest
import torch

from spade_core.diffusion import AttentionCapture, invert, sample, teacher_maps
from spade_core.diffusion.schedulers import grid_from_config

N = 6


class CallLog:
    """Logs (timestep, recording?) of every UNet call."""

    def __init__(self, unet, capture):
        self.calls: list[tuple[int, bool]] = []
        self.capture = capture
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append((int(args[1]), self.capture.enabled))


def test_belm_maps_during_inversion_equal_regeneration(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    cap = AttentionCapture(tiny_unet)
    log = CallLog(tiny_unet, cap)
    fast = teacher_maps(tiny_unet, x0, cond, method="belm", num_steps=N, capture=cap)
    fast_log, log.calls = log.calls, []
    slow = teacher_maps(tiny_unet, x0, cond, method="belm", num_steps=N, capture=cap, regenerate=True)
    t1 = grid_from_config(None, N).timestep(1)
    # cost: N calls instead of N + (N - 1); exactly one recorded call, at t_1, in both
    assert (fast.unet_calls, slow.unet_calls) == (N, 2 * N - 1)
    assert len(fast_log) == N and len(log.calls) == 2 * N - 1
    assert [c for c in fast_log if c[1]] == [(t1, True)] and fast_log[1] == (t1, True)
    assert [c for c in log.calls if c[1]] == [(t1, True)] and log.calls[-1] == (t1, True)  # the last denoising call
    assert torch.equal(fast.noise, slow.noise)
    assert fast.maps.shape == (2, 7, 16, 16)
    assert (fast.maps - slow.maps).abs().max() <= 1e-5
    # not a tautology: the map of another step differs clearly
    other = teacher_maps(tiny_unet, x0, cond, method="belm", num_steps=N, capture=cap, capture_step=3)
    assert (other.maps - fast.maps).abs().max() > 1e-3


def test_ddim_extra_call_and_regeneration(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    cap = AttentionCapture(tiny_unet)
    fast = teacher_maps(tiny_unet, x0, cond, method="ddim", num_steps=N, capture=cap)
    slow = teacher_maps(tiny_unet, x0, cond, method="ddim", num_steps=N, capture=cap, regenerate=True)
    assert (fast.unet_calls, slow.unet_calls) == (N + 1, 2 * N)
    assert torch.equal(fast.noise, invert(tiny_unet, x0, cond, method="ddim", num_steps=N))
    # capture_step = N is the notes' point: one forward unet(x_T, t_N, prompt) after inversion
    at_noise = teacher_maps(tiny_unet, x0, cond, method="ddim", num_steps=N, capture=cap, capture_step=N)
    with torch.no_grad(), cap.recording():
        tiny_unet(fast.noise, grid_from_config(None, N).timestep(N), encoder_hidden_states=cond)
    assert torch.allclose(at_noise.maps, cap.maps(), atol=1e-6)
    assert at_noise.unet_calls == N + 1


def test_sample_capture_records_last_call(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    cap = AttentionCapture(tiny_unet)
    pair = invert(tiny_unet, x0, cond, method="belm", num_steps=N)
    log = CallLog(tiny_unet, cap)
    sample(tiny_unet, pair[:, 0], cond, method="belm", num_steps=N, capture=cap)  # from x_N alone: N calls
    assert len(log.calls) == N and [c[1] for c in log.calls] == [False] * (N - 1) + [True]
    with pytest.raises(ValueError, match="capture_step"):
        sample(tiny_unet, pair, cond, method="belm", num_steps=N, capture=cap, capture_step=N)
    with pytest.raises(ValueError, match="capture_step"):
        invert(tiny_unet, x0, cond, method="ddim", num_steps=N, capture=cap, capture_step=0)


def test_temporary_capture_is_removed(tiny_unet, latents_and_cond):
    x0, cond = latents_and_cond
    before = {k: type(p) for k, p in tiny_unet.attn_processors.items()}
    out = teacher_maps(tiny_unet, x0[:1], cond[:1], method="belm", num_steps=3, size=(8, 8))
    assert out.maps.shape == (1, 7, 8, 8)
    assert {k: type(p) for k, p in tiny_unet.attn_processors.items()} == before
