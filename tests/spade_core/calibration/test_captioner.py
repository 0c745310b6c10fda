import pytest
import torch

from spade_core.calibration import (
    ImplicitCaptioner,
    add_calibration_lora,
    image_features,
    load_adapter,
    save_adapter,
)


def _captioner(clip, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(embed_dim=64, num_tokens=7, cross_attention_dim=32, hidden_dim=16) | kw
    return ImplicitCaptioner(clip.model, **args)


def _images(b=2, seed=0):
    return torch.randn(b, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_frozen_clip(tiny_clip):
    cap = _captioner(tiny_clip).train()
    images = _images()
    cond = cap(images)
    assert cond.shape == (2, 7, 32)
    assert not torch.allclose(cond[0], cond[1])  # image-dependent tokens
    assert not torch.allclose(cond[0, 0], cond[0, 1])
    assert cap.dense_features(images).shape == (2, 64, 16, 16)
    assert not cap.visual.training and cap.adapter.training
    trainable = {id(p) for p in cap.trainable_parameters()}
    assert trainable == {id(p) for p in cap.parameters() if p.requires_grad}
    assert not any(id(p) in trainable for p in cap.visual.parameters())
    assert cap.dense_features(images).requires_grad is False
    assert torch.equal(cap.condition(image_features(tiny_clip, images)[0]), cond)


def test_bad_arguments(tiny_clip):
    with pytest.raises(ValueError, match="embed_dim"):
        _captioner(tiny_clip, embed_dim=32)
    with pytest.raises(ValueError, match="hidden_dim"):
        _captioner(tiny_clip, hidden_dim=0)
    with pytest.raises(ValueError, match="init_tokens"):
        _captioner(tiny_clip, init_tokens=torch.zeros(3, 32))
    init = torch.randn(7, 32)
    assert torch.equal(_captioner(tiny_clip, init_tokens=init).token_bias.data, init)


def test_adapter_round_trip(tiny_clip, tmp_path):
    cap, other = _captioner(tiny_clip, seed=0), _captioner(tiny_clip, seed=1)
    images = _images()
    assert not torch.equal(cap(images), other(images))
    save_adapter(cap, tmp_path / "adapter.safetensors")
    load_adapter(other, tmp_path / "adapter.safetensors")
    assert torch.equal(cap(images), other(images))
    # deterministic bytes
    save_adapter(other, tmp_path / "again.safetensors")
    assert (tmp_path / "adapter.safetensors").read_bytes() == (tmp_path / "again.safetensors").read_bytes()
    with pytest.raises(ValueError, match="shape"):
        load_adapter(_captioner(tiny_clip, hidden_dim=8), tmp_path / "adapter.safetensors")


def test_only_lora_and_adapter_are_trained(tiny_clip, unet):
    """Two AdamW steps through captioner + LoRA UNet: base UNet and CLIP stay bit-identical."""
    cap = _captioner(tiny_clip).train()
    lora_params = add_calibration_lora(unet, rank=4, alpha=4.0)
    base_unet = {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    base_clip = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    lora_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}
    adapter_before = [p.detach().clone() for p in cap.trainable_parameters()]
    opt = torch.optim.AdamW([*lora_params, *cap.trainable_parameters()], lr=1e-2, weight_decay=0.0)
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # B = 0 at init, so A only gets a gradient from the second step on
        out = unet(sample, 10, encoder_hidden_states=cap(_images())).sample
        loss = (out - 1.0).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base_unet.items())
    assert all(torch.equal(v, tiny_clip.model.state_dict()[k]) for k, v in base_clip.items())
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    lora_after = dict(unet.named_parameters())
    for kind in ("lora_A", "lora_B"):
        changed = [not torch.equal(v, lora_after[n]) for n, v in lora_before.items() if kind in n]
        assert changed and all(changed), kind
    assert all(not torch.equal(b, p) for b, p in zip(adapter_before, cap.trainable_parameters()))
