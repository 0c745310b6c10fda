import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from spade_core.calibration import (
    add_calibration_lora,
    has_adapters,
    load_lora_state_dict,
    lora_state_dict,
    set_calibration_mode,
    teacher_mode,
)


def _run(unet, inputs):
    sample, t, cond = inputs
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=cond).sample


def _perturb_lora(unet, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def test_lora_targets_cross_attention_kv_only(unet):
    params = add_calibration_lora(unet, rank=4, alpha=8.0)
    wrapped = [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
    n_cross = sum(1 for n, _ in unet.named_modules() if n.endswith(".attn2"))
    assert n_cross == 4
    assert len(wrapped) == 2 * n_cross
    assert all(n.endswith((".attn2.to_k", ".attn2.to_v")) for n in wrapped)
    names = {id(p): n for n, p in unet.named_parameters()}
    assert params and all("lora_" in names[id(p)] and ".attn2." in names[id(p)] for p in params)
    assert sum(p.requires_grad for p in unet.parameters()) == len(params) == 4 * n_cross


def test_lora_bad_arguments(unet_factory):
    with pytest.raises(ValueError, match="matches no module"):
        add_calibration_lora(unet_factory(), 4, 4.0, ("attn2.to_k", "attn3.to_k"))
    with pytest.raises(ValueError, match="rank"):
        add_calibration_lora(unet_factory(), 0, 4.0)
    with pytest.raises(ValueError, match="not nn.Linear"):
        add_calibration_lora(unet_factory(), 4, 4.0, ("attn2",))


def test_gaussian_init_starts_at_the_teacher(unet, unet_inputs):
    base = _run(unet, unet_inputs)
    add_calibration_lora(unet, rank=4, alpha=4.0)
    assert torch.equal(_run(unet, unet_inputs), base)
    lora_a = [p for n, p in unet.named_parameters() if "lora_A" in n]
    assert all(p.abs().sum() > 0 for p in lora_a)


def test_teacher_mode_disables_adapters(unet, unet_factory, unet_inputs):
    base = _run(unet_factory(), unet_inputs)
    add_calibration_lora(unet, rank=4, alpha=4.0)
    _perturb_lora(unet)
    student = _run(unet, unet_inputs)
    assert not torch.allclose(student, base)
    flags = [p.requires_grad for p in unet.parameters()]
    with teacher_mode(unet):
        assert torch.equal(_run(unet, unet_inputs), base)
    assert torch.equal(_run(unet, unet_inputs), student)
    assert [p.requires_grad for p in unet.parameters()] == flags
    # a frozen student stays frozen (peft's enable_adapters would set requires_grad=True again)
    unet.requires_grad_(False)
    with teacher_mode(unet):
        pass
    assert not any(p.requires_grad for p in unet.parameters())
    # no adapters: a no-op
    plain = unet_factory()
    with teacher_mode(plain):
        assert torch.equal(_run(plain, unet_inputs), base)


def test_lora_round_trip_through_safetensors(unet, unet_factory, unet_inputs, tmp_path):
    add_calibration_lora(unet, rank=4, alpha=8.0)
    _perturb_lora(unet)
    expected = _run(unet, unet_inputs)
    state = lora_state_dict(unet)
    assert len(state) == 16 and all(".attn2.to_" in k for k in state)
    save_file(state, str(tmp_path / "lora.safetensors"))
    student = unet_factory()
    params = load_lora_state_dict(student, load_file(str(tmp_path / "lora.safetensors")), rank=4, alpha=8.0)
    assert len(params) == 16
    assert torch.equal(_run(student, unet_inputs), expected)
    # alpha is part of the student: loading with another alpha changes the outputs
    scaled = unet_factory()
    load_lora_state_dict(scaled, state, rank=4, alpha=4.0)
    assert not torch.allclose(_run(scaled, unet_inputs), expected)
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(unet_factory(), state, rank=2, alpha=8.0)
    with pytest.raises(ValueError, match="keys"):
        load_lora_state_dict(unet_factory(), state, rank=4, alpha=8.0, target_modules=("attn2.to_k",))


def test_modes_full_and_none(unet_factory, unet_inputs):
    full = unet_factory()
    params = set_calibration_mode(full, "full")
    assert len(params) == len(list(full.parameters())) and all(p.requires_grad for p in full.parameters())
    assert not has_adapters(full)
    before = {k: v.clone() for k, v in full.state_dict().items()}
    sample, t, cond = unet_inputs
    opt = torch.optim.SGD(params, lr=1e-2)
    full(sample, t, encoder_hidden_states=cond).sample.abs().mean().backward()
    opt.step()
    changed = [not torch.equal(v, full.state_dict()[k]) for k, v in before.items()]
    assert sum(changed) > len(changed) // 2

    none = unet_factory()
    none.requires_grad_(True)
    assert set_calibration_mode(none, "none") == []
    assert not any(p.requires_grad for p in none.parameters())
    assert not has_adapters(none)

    lora = unet_factory()
    assert len(set_calibration_mode(lora, "lora", rank=2, alpha=2.0)) == 16
    with pytest.raises(ValueError, match="without LoRA"):
        set_calibration_mode(lora, "full")
    with pytest.raises(ValueError, match="mode"):
        set_calibration_mode(unet_factory(), "partial")
