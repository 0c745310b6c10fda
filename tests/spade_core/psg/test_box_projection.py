import numpy as np
import pytest
import torch
from scipy import ndimage

from spade_core.psg.box_matcher import BoxHungarianMatcher
from spade_core.psg.box_projection import (
    axis_projections,
    box_outside_loss,
    box_projection_loss,
    box_projection_targets,
    boxes_from_mask_logits,
    largest_component,
    pairwise_projection_cost,
)

# on an 8 x 8 grid: columns 2..5 (x 0.25-0.75), rows 0..3 (y 0-0.5)
BOX = [0.5, 0.25, 0.5, 0.5]


def _box_logits(cols: slice, rows: slice, size: int = 8, on: float = 10.0) -> torch.Tensor:
    m = torch.full((size, size), -on)
    m[rows, cols] = on
    return m


def test_projection_targets_are_the_covered_columns_and_rows():
    tx, ty = box_projection_targets(torch.tensor([BOX]), (8, 8))
    assert tx.tolist() == [[0, 0, 1, 1, 1, 1, 0, 0]] and ty.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    px, py = axis_projections(torch.tensor([[[0.0, 2.0], [9.0, 1.0]]]))
    assert px.tolist() == [[9.0, 2.0]] and py.tolist() == [[2.0, 9.0]]


def test_projection_loss_zero_for_any_mask_with_the_box_as_its_tight_box():
    boxes = torch.tensor([BOX])
    full = _box_logits(slice(2, 6), slice(0, 4))
    cross = torch.full((8, 8), -10.0)  # a "+" shape touching all four box edges: same projections as the box
    cross[1, 2:6] = 10.0
    cross[0:4, 3] = 10.0
    for mask in (full, cross):
        assert box_projection_loss(mask[None], boxes, 1.0) < 1e-3
    shifted = _box_logits(slice(4, 8), slice(0, 4))  # 2 of 4 columns right: x dice 1 - (2*2+1)/(4+4+1), y 0
    torch.testing.assert_close(box_projection_loss(shifted[None], boxes, 2.0), torch.tensor(4 / 9 / 2), atol=2e-3,
                               rtol=0)
    empty = torch.zeros(0, 8, 8, requires_grad=True)
    loss = box_projection_loss(empty, torch.zeros(0, 4), 1.0)
    assert loss == 0 and loss.requires_grad


def test_projection_loss_gradient_moves_the_mask_toward_the_box():
    """A mask half-way there: the box's left half on, plus a blob outside. The gradient lowers the blob (the
    max of its row and column) and raises the box's missing columns (at their max, one row each)."""
    mask = _box_logits(slice(2, 4), slice(0, 4), on=1.0)
    mask[6, 7] = 1.0
    mask.requires_grad_(True)
    box_projection_loss(mask[None], torch.tensor([BOX]), 1.0).backward()
    g = mask.grad
    assert g[6, 7] > 0
    assert (g[:, 4:6].sum(0) < 0).all() and (g[:, 0:2].sum(0) >= 0).all()


def test_outside_loss_penalises_only_the_pixels_outside_the_box():
    """The stray blob the projections miss: a mask on its box plus a blob below it in the box's columns has
    (nearly) the box's x projection and a y projection off by the blob only, but every blob pixel is outside."""
    boxes = torch.tensor([BOX])
    on_box = _box_logits(slice(2, 6), slice(0, 4))
    spilled = on_box.clone()
    spilled[5:8, 2:6] = 10.0
    assert box_outside_loss(on_box[None], boxes, 1.0) < 1e-3
    # 12 of the 48 outside pixels at logit 10 (BCE ~10), the rest at -10 (BCE ~0)
    torch.testing.assert_close(box_outside_loss(spilled[None], boxes, 2.0), torch.tensor(12 * 10.0 / 48 / 2),
                               atol=1e-3, rtol=0)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]])  # no pixel outside: nothing to penalise
    assert box_outside_loss(spilled[None], full, 1.0) == 0
    empty = box_outside_loss(torch.zeros(0, 8, 8, requires_grad=True), torch.zeros(0, 4), 1.0)
    assert empty == 0 and empty.requires_grad


def test_pairwise_cost_matches_the_loss_and_drives_the_matcher():
    masks = torch.stack([_box_logits(slice(0, 2), slice(6, 8)), _box_logits(slice(2, 6), slice(0, 4))])
    boxes = torch.tensor([BOX, [0.125, 0.875, 0.25, 0.25]])
    cost = pairwise_projection_cost(masks, boxes)
    for q in range(2):
        for s in range(2):
            torch.testing.assert_close(cost[q, s], box_projection_loss(masks[q:q + 1], boxes[s:s + 1], 1.0))
    assert cost[1, 0] < 1e-3 and cost[0, 1] < 1e-3 and cost[0, 0] > 1.5
    # the head's boxes and the class say nothing (identical); the projection cost alone decides
    logits = torch.zeros(1, 2, 3)
    head = torch.full((1, 2, 4), 0.5)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes}]
    ((rows, cols),) = BoxHungarianMatcher(1.0, 5.0, 2.0, cost_proj=5.0)(logits, head, targets, masks[None])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    with pytest.raises(ValueError, match="disagree"):
        BoxHungarianMatcher()(logits, head, targets, masks[None, :1])


def test_boxes_from_mask_logits_tight_box_and_fallback():
    masks = torch.stack([_box_logits(slice(2, 6), slice(0, 4)), torch.full((8, 8), -5.0)])[None]
    fallback = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.6, 0.4, 0.2, 0.3]]])
    boxes = boxes_from_mask_logits(masks, fallback, upsample=1)
    torch.testing.assert_close(boxes[0, 0], torch.tensor(BOX))
    torch.testing.assert_close(boxes[0, 1], fallback[0, 1])  # empty mask: the head's box
    # sub-cell edges: logits falling linearly from +1 to -1 across a cell boundary put the edge between them
    ramp = torch.full((1, 1, 8, 8), -1.0)
    ramp[..., 2:4] = 1.0
    fine = boxes_from_mask_logits(ramp, torch.zeros(1, 1, 4), upsample=4)
    x1, x2 = fine[0, 0, 0] - fine[0, 0, 2] / 2, fine[0, 0, 0] + fine[0, 0, 2] / 2
    assert 0.2 <= x1 <= 0.25 and 0.5 <= x2 <= 0.55
    with pytest.raises(ValueError, match="upsample"):
        boxes_from_mask_logits(masks, fallback, upsample=0)
    with pytest.raises(ValueError, match="fallback"):
        boxes_from_mask_logits(masks, fallback[:, :1])


def test_largest_component_matches_scipy_on_random_masks():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 13, 17, generator=gen) < 0.45
    masks[0] = False  # empty stays empty
    got = largest_component(masks)
    for m, g in zip(masks.numpy(), got.numpy()):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))  # 8-connected
        if n == 0:
            assert not g.any()
            continue
        areas = ndimage.sum(m, lab, range(1, n + 1))
        assert g.sum() == areas.max() and len(np.unique(lab[g])) == 1
    # a snake-shaped component longer than the grid side is still one component
    snake = torch.zeros(1, 7, 7, dtype=torch.bool)
    snake[0, ::2] = True
    snake[0, 1, 6] = snake[0, 3, 0] = snake[0, 5, 6] = True
    assert torch.equal(largest_component(snake), snake)
    with pytest.raises(ValueError, match="N,H,W"):
        largest_component(masks[0])


def test_boxes_from_mask_logits_ignore_a_stray_blob():
    m = _box_logits(slice(2, 6), slice(0, 4))
    m[7, 7] = 10.0  # one stray pixel, not connected to the mask
    boxes = boxes_from_mask_logits(m[None, None], torch.zeros(1, 1, 4), upsample=1)
    torch.testing.assert_close(boxes[0, 0], torch.tensor(BOX))
