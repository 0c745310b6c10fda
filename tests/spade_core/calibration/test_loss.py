import math

import pytest
import torch

from spade_core.calibration import calibration_loss, map_correlation


def test_calibration_loss_by_hand():
    student = torch.zeros(2, 3, 2, 2)
    teacher = torch.zeros(2, 3, 2, 2)
    student[0, 0] = 1.0  # |diff| = 1 on 4 pixels, token 0 of image 0 (valid)
    student[0, 2] = 5.0  # token 2 of image 0 is padding: ignored
    teacher[1, 1, 0, 0] = 2.0  # image 1, token 1 (valid), one pixel
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = calibration_loss(student, teacher, mask, lam=3.0)
    image0 = 4.0 / (2 * 4)  # 2 valid tokens x 4 pixels
    image1 = 2.0 / (3 * 4)
    assert loss.item() == pytest.approx(3.0 * (image0 + image1) / 2)


def test_calibration_loss_empty_row_and_gradient():
    student = torch.rand(2, 4, 3, 3, requires_grad=True)
    teacher = torch.rand(2, 4, 3, 3)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    loss = calibration_loss(student, teacher, mask, lam=1.0)
    assert torch.isfinite(loss)
    expected = (student[0, :2] - teacher[0, :2]).abs().mean() / 2  # empty image counts in B, adds 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert torch.equal(student.grad[1], torch.zeros(4, 3, 3)) and torch.equal(student.grad[0, 2:], torch.zeros(2, 3, 3))
    assert calibration_loss(student, teacher, torch.zeros(2, 4, dtype=torch.bool)).item() == 0.0


def test_calibration_loss_bad_input():
    x = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="teacher_maps"):
        calibration_loss(x, torch.rand(1, 2, 4, 4), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="token_mask"):
        calibration_loss(x, x, torch.ones(1, 2))
    with pytest.raises(ValueError, match="lam"):
        calibration_loss(x, x, torch.ones(1, 2, dtype=torch.bool), lam=-1.0)


def test_map_correlation():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, 5, 5, generator=g)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    corr = map_correlation(maps, maps, mask)
    assert corr[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert math.isnan(corr[2].item())
    assert map_correlation(maps, -maps, mask)[0].item() == pytest.approx(-1.0, abs=1e-6)
    assert map_correlation(maps, 2 * maps + 1, mask)[0].item() == pytest.approx(1.0, abs=1e-6)
    flat = torch.ones_like(maps)
    assert map_correlation(maps, flat, mask)[0].item() == 0.0
    other = torch.rand(3, 4, 5, 5, generator=g)
    assert abs(map_correlation(maps, other, mask)[0].item()) < 0.5
