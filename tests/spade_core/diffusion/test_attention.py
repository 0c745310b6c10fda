"""Capturing attention processors: equal to the fast path, rows sum to 1, gradients, peft LoRA."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from peft import LoraConfig

from spade_core.diffusion import AttentionCapture, cross_attention_layers, fast_attention_backend


def _forward(unet, x, cond):
    return unet(x, 501, encoder_hidden_states=cond).sample


def test_capture_path_equals_fast_path_and_default_processors(tiny_unet, latents_and_cond):
    x, cond = latents_and_cond
    cond = cond * 4  # peakier attention than random tiny conditioning gives
    with torch.no_grad():
        ref = _forward(tiny_unet, x, cond)  # diffusers' own default processors
        cap = AttentionCapture(tiny_unet)
        fast = _forward(tiny_unet, x, cond)
        with cap.recording():
            captured = _forward(tiny_unet, x, cond)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.equal(captured, fast)  # recording never changes the output
    assert set(cap.layer_maps) == set(cross_attention_layers(tiny_unet))


def test_records_only_while_enabled_and_rows_sum_to_one(tiny_unet, latents_and_cond):
    x, cond = latents_and_cond
    cap = AttentionCapture(tiny_unet)
    with torch.no_grad():
        _forward(tiny_unet, x, cond)
        assert cap.layer_maps == {}
        with pytest.raises(RuntimeError, match="no attention maps"):
            cap.maps()
        with cap.recording():
            _forward(tiny_unet, x, cond)
        _forward(tiny_unet, x * 2, cond)  # not recorded: maps stay those of the recorded call
    layer_maps = cap.layer_maps
    assert {tuple(m.shape) for m in layer_maps.values()} == {(2, 256, 7), (2, 64, 7)}  # 16x16 and mid 8x8
    for m in layer_maps.values():
        assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-5)
        assert not m.requires_grad
    maps = cap.maps()
    assert maps.shape == (2, 7, 16, 16) and cap.latent_hw == (16, 16)
    assert torch.allclose(maps.sum(1), torch.ones(()), atol=1e-5)  # a mean of row-stochastic maps
    assert cap.maps(size=(8, 8)).shape == (2, 7, 8, 8)
    # the aggregate is the mean over layers of each map bilinearly resized to 16x16
    resized = [torch.nn.functional.interpolate(m.reshape(2, r, r, 7).permute(0, 3, 1, 2), size=(16, 16),
                                               mode="bilinear") for m in layer_maps.values()
               for r in [int(m.shape[1] ** 0.5)]]
    assert torch.allclose(maps, torch.stack(resized).mean(0), atol=1e-6)


def test_non_square_latents(tiny_unet):
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 4, 16, 24, generator=g), torch.randn(1, 5, 32, generator=g)
    cap = AttentionCapture(tiny_unet)
    with torch.no_grad(), cap.recording():
        _forward(tiny_unet, x, cond)
    assert cap.maps().shape == (1, 5, 16, 24)


def test_layer_subset_remove_and_errors(tiny_unet, latents_and_cond):
    x, cond = latents_and_cond
    layers = cross_attention_layers(tiny_unet)
    with pytest.raises(ValueError, match="attn2"):
        AttentionCapture(tiny_unet, layers=["down_blocks.0.attentions.0.transformer_blocks.0.attn1"])
    before = {k: type(p) for k, p in tiny_unet.attn_processors.items()}
    cap = AttentionCapture(tiny_unet, layers=layers[:1])
    with torch.no_grad(), cap.recording():
        _forward(tiny_unet, x, cond)
    assert list(cap.layer_maps) == layers[:1]
    cap.remove()
    assert {k: type(p) for k, p in tiny_unet.attn_processors.items()} == before
    assert fast_attention_backend("cpu") == "sdpa"


def test_gradients_flow_with_keep_graph_through_peft_lora(tiny_unet, latents_and_cond):
    x, cond = latents_and_cond
    tiny_unet.requires_grad_(False)
    tiny_unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["attn2.to_k", "attn2.to_v"]))
    cap = AttentionCapture(tiny_unet, keep_graph=True)  # installed after the adapter
    names = [k for k, p in tiny_unet.attn_processors.items() if "attn2" in k]
    assert all(type(tiny_unet.attn_processors[k]).__name__ == "SpadeAttnProcessor" for k in names)
    cond = cond.clone().requires_grad_(True)
    with cap.recording():
        _forward(tiny_unet, x, cond)
    maps = cap.maps()
    assert maps.requires_grad
    maps.square().sum().backward()
    lora_b = [p for n, p in tiny_unet.named_parameters() if "lora_B" in n and "to_k" in n]  # B = 0 at init
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert cond.grad is not None and cond.grad.abs().sum() > 0


def test_peft_after_capture_keeps_processors(tiny_unet, latents_and_cond):
    x, cond = latents_and_cond
    cap = AttentionCapture(tiny_unet)
    tiny_unet.add_adapter(LoraConfig(r=2, target_modules=["attn2.to_k", "attn2.to_v"]))
    with torch.no_grad(), cap.recording():
        out = _forward(tiny_unet, x, cond)
    assert len(cap.layer_maps) == len(cross_attention_layers(tiny_unet))
    tiny_unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        assert torch.allclose(_forward(tiny_unet, x, cond), out, atol=1e-5)


def test_recorded_probabilities_match_an_explicit_softmax(tiny_unet, latents_and_cond):
    """Against diffusers' own ``Attention.get_attention_scores`` on the first cross-attention layer."""
    x, cond = latents_and_cond
    name = cross_attention_layers(tiny_unet)[0]
    attn = tiny_unet.get_submodule(name)
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(h=a[0] if a else kw["hidden_states"]),
                                          with_kwargs=True)
    cap = AttentionCapture(tiny_unet, layers=[name])
    with torch.no_grad(), cap.recording():
        _forward(tiny_unet, x, cond)
    hook.remove()
    with torch.no_grad():
        q, k = attn.head_to_batch_dim(attn.to_q(seen["h"])), attn.head_to_batch_dim(attn.to_k(cond))
        ref = attn.get_attention_scores(q, k).view(2, attn.heads, 256, 7).mean(1)
    assert torch.allclose(cap.layer_maps[name], ref, atol=1e-6)


def test_layers_of_unet_parts_on_an_sd15_layout():
    """SD 1.5's 16 cross-attention layers: 6 in the encoder (2 per attention level), 1 mid, 9 in the decoder."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        )  # fmt: skip
    every = cross_attention_layers(unet)
    parts = {p: cross_attention_layers(unet, [p]) for p in ("down", "mid", "up")}
    assert [len(parts[p]) for p in ("down", "mid", "up")] == [6, 1, 9] and len(every) == 16
    assert parts["mid"] == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert all(n.startswith("up_blocks.") for n in parts["up"])
    assert cross_attention_layers(unet, ["down", "up"]) == [n for n in every if n not in parts["mid"]]  # module order
    assert cross_attention_layers(unet, ["up", "down"]) == cross_attention_layers(unet, ["down", "up"])
    with pytest.raises(ValueError, match=r"subset of \['down', 'mid', 'up'\], got \['encoder'\]"):
        cross_attention_layers(unet, ["encoder"])
