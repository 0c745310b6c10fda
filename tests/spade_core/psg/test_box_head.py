import pytest
import torch

from spade_core.psg.box_head import BoxHead, denormalize_boxes, normalize_boxes


def test_box_head_shape_range_and_layers():
    torch.manual_seed(0)
    head = BoxHead(16)
    assert len(head.mlp.layers) == 3
    assert [tuple(layer.weight.shape) for layer in head.mlp.layers] == [(16, 16), (16, 16), (4, 16)]
    out = head(torch.randn(2, 5, 16) * 10)
    assert out.shape == (2, 5, 4)
    assert (out >= 0).all() and (out <= 1).all()
    with pytest.raises(ValueError):
        head(torch.randn(5, 16))
    with pytest.raises(ValueError):
        BoxHead(16, num_layers=0)


def test_box_head_gradient():
    head = BoxHead(8)
    feats = torch.randn(1, 3, 8, requires_grad=True)
    head(feats).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


def test_normalize_hand_case_and_round_trip():
    # image H=100, W=200: box x 20..60, y 10..50 -> cx 40/200, cy 30/100, w 40/200, h 40/100
    boxes = torch.tensor([[20.0, 10.0, 60.0, 50.0]])
    norm = normalize_boxes(boxes, (100, 200))
    torch.testing.assert_close(norm, torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    torch.testing.assert_close(denormalize_boxes(norm, (100, 200)), boxes)
    # batched [B,Q,4] with one size per image
    batch = norm[None].expand(2, 1, 4)
    sizes = torch.tensor([[100, 200], [50, 100]])[:, None]
    out = denormalize_boxes(batch, sizes)
    torch.testing.assert_close(out[1, 0], boxes[0] / 2)
