"""A few calibration steps on captured cross-attention maps (uses spade_core.diffusion.attention)."""

import pytest
import torch

from spade_core.calibration import (
    ImplicitCaptioner,
    add_calibration_lora,
    calibration_loss,
    map_correlation,
    teacher_mode,
)

attention = pytest.importorskip("spade_core.diffusion.attention")


def test_student_maps_move_towards_teacher(tiny_clip, unet):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    images = torch.randn(2, 3, 128, 128, generator=g)
    text_cond = torch.randn(2, 7, 32, generator=g)
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
    capture = attention.AttentionCapture(unet, keep_graph=True)
    torch.manual_seed(0)
    captioner = ImplicitCaptioner(tiny_clip.model, 64, 7, 32, 32).train()
    params = add_calibration_lora(unet, rank=4, alpha=4.0)
    base = {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}

    with teacher_mode(unet), torch.no_grad(), capture.recording():
        unet(sample, 0, encoder_hidden_states=text_cond)
        teacher = capture.maps().detach()
    assert teacher.shape == (2, 7, 16, 16)

    opt = torch.optim.AdamW([*params, *captioner.trainable_parameters()], lr=3e-2, weight_decay=0.0)
    losses = []
    for step in range(6):
        with capture.recording():
            unet(sample, 0, encoder_hidden_states=captioner(images))
            student = capture.maps()
        loss = calibration_loss(student, teacher, mask, lam=1.0)
        if step == 0:
            corr_before = map_correlation(student, teacher, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    with torch.no_grad(), capture.recording():
        unet(sample, 0, encoder_hidden_states=captioner(images))
        after = capture.maps()
    assert map_correlation(after, teacher, mask).mean() > corr_before + 0.05
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in base.items())
