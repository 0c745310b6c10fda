import pytest
import torch

from spade_core.eval.spatial import distant_pair_mask
from spade_core.psg.box_graph import (
    box_adjacency,
    box_masks,
    box_spatial_semantic_graph,
    pair_union_boxes,
    pairwise_box_iou,
    union_box_masks,
)
from spade_core.psg.classifier import mask_pool
from spade_core.psg.graph import pairwise_mask_iou, spatial_semantic_graph


def _feats(n, d=8):
    return torch.eye(d)[:n][None]  # cosine 0 between distinct queries


def _raster(boxes, h, w):
    """Integer pixel xyxy (exclusive ends) -> bool masks [1,N,H,W]."""
    out = torch.zeros(1, len(boxes), h, w, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        out[0, i, y1:y2, x1:x2] = True
    return out


def test_overlap_touch_and_gap_cases():
    boxes = torch.tensor([[[0.0, 0, 4, 4], [3, 3, 6, 6], [4, 0, 6, 2], [6, 0, 8, 2]]])
    # 0-1 overlap (share pixel (3,3)); 0-2 touch (x2 = x1 = 4); 0-3 one empty column apart (x 4..5 between)
    a0 = box_adjacency(boxes, 0)[0]
    assert a0[0, 1] and not a0[0, 2] and not a0[0, 3]
    a1 = box_adjacency(boxes, 1)[0]
    assert a1[0, 1] and a1[0, 2] and not a1[0, 3]
    a3 = box_adjacency(boxes, 3)[0]
    assert a3[0, 3]
    assert torch.equal(a1, a1.T) and a0.diagonal().all()
    with pytest.raises(ValueError):
        box_adjacency(boxes, -1)


def test_diagonal_touching_counts_only_with_dilation():
    boxes = torch.tensor([[[0.0, 0, 2, 2], [2, 2, 4, 4]]])  # corner to corner
    assert not box_adjacency(boxes, 0)[0, 0, 1]
    assert box_adjacency(boxes, 1)[0, 0, 1]


def test_same_graph_as_the_mask_version_on_rasterised_boxes():
    g = torch.Generator().manual_seed(0)
    h = w = 16
    for _ in range(20):
        xy = torch.randint(0, 14, (6, 2), generator=g)
        wh = torch.randint(1, 6, (6, 2), generator=g)
        rows = [[int(x), int(y), min(int(x + a), w), min(int(y + b), h)] for (x, y), (a, b) in zip(xy, wh)]
        boxes = torch.tensor([rows], dtype=torch.float32)
        for d in range(4):
            expect = spatial_semantic_graph(_raster(rows, h, w), _feats(6), d, 0.5)
            got = box_spatial_semantic_graph(boxes, _feats(6), d, 0.5)
            assert torch.equal(got, expect), (rows, d)


def test_graph_from_normalised_cxcywh_with_size_semantic_and_valid():
    # in a 10x20 (H, W) frame: box 0 x 0..4, box 1 x 5..9 (gap: one column), box 2 far away
    boxes = torch.tensor([[[0.1, 0.2, 0.2, 0.4], [0.35, 0.2, 0.2, 0.4], [0.9, 0.9, 0.1, 0.1]]])
    feats = torch.tensor([[[1.0, 0], [0, 1], [0, 1]]])
    g1 = box_spatial_semantic_graph(boxes, feats, 1, 0.9, size=(10, 20))[0]
    g2 = box_spatial_semantic_graph(boxes, feats, 2, 0.9, size=(10, 20))[0]
    assert g1[0, 1] == 0 and g2[0, 1] == 1
    assert g1[1, 2] == 1  # semantic edge (same features), far apart
    assert g1.diagonal().sum() == 0 and torch.equal(g2, g2.T)
    valid = torch.tensor([[True, True, False]])
    gv = box_spatial_semantic_graph(boxes, feats, 2, 0.9, valid, size=(10, 20))[0]
    assert gv[1, 2] == 0 and gv[0, 1] == 1
    assert gv.dtype == feats.dtype and not gv.requires_grad
    with pytest.raises(ValueError):
        box_spatial_semantic_graph(boxes, feats[:, :2], 1, 0.9)


def test_box_masks_binary_soft_and_tiny_boxes():
    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.30, 0.30, 0.31, 0.31]]])
    m = box_masks(boxes, (4, 4))
    expect = torch.zeros(4, 4)
    expect[1:3, 1:3] = 1
    assert torch.equal(m[0, 0], expect)
    tiny = torch.zeros(4, 4)
    tiny[1, 1] = 1  # covers no pixel centre: the pixel containing its midpoint
    assert torch.equal(m[0, 1], tiny)
    # soft: x 0..1.5 px of W=4, y 0..1 px of H=2
    soft = box_masks(torch.tensor([[[0.0, 0.0, 0.375, 0.5]]]), (2, 4), soft=True)[0, 0]
    torch.testing.assert_close(soft, torch.tensor([[1.0, 0.5, 0, 0], [0, 0, 0, 0]]))


def test_soft_box_masks_are_differentiable():
    boxes = torch.tensor([[[0.1, 0.1, 0.63, 0.7]]], requires_grad=True)
    box_masks(boxes, (8, 8), soft=True).sum().backward()
    assert boxes.grad.abs().sum() > 0


def test_union_boxes_and_pooling_over_them():
    boxes = torch.tensor([[[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]])
    pairs = torch.tensor([[[0, 1], [2, 0]]])
    union = pair_union_boxes(boxes, pairs)
    torch.testing.assert_close(union, torch.tensor([[[0.0, 0, 1, 1], [0, 0, 0.5, 1]]]))
    masks = union_box_masks(boxes, pairs, (4, 4))
    assert masks.shape == (1, 2, 4, 4)
    assert masks[0, 0].sum() == 16 and masks[0, 1].sum() == 8 and masks[0, 1, :, 2:].sum() == 0
    # pooled CLIP feature over a box = mean of the dense map inside it
    dense = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = mask_pool(dense, box_masks(boxes, (4, 4)))
    torch.testing.assert_close(pooled[0, 1, 0], dense[0, 0, 2:, 2:].mean())


def test_dr_ndr_takes_pixel_boxes():
    # box centres (5, 5) and (85, 5): 80 px apart; distant iff 80 > width / 3
    boxes = [[0, 0, 10, 10], [80, 0, 90, 10]]
    assert distant_pair_mask([[0, 1, 0]], boxes, 150).tolist() == [True]
    assert distant_pair_mask([[0, 1, 0]], boxes, 300).tolist() == [False]


def test_pairwise_box_iou_matches_torchvision_and_the_rasterised_masks():
    from torchvision.ops import box_iou

    boxes = [(0, 0, 4, 4), (2, 2, 6, 6), (8, 8, 12, 10), (0, 0, 4, 4), (3, 0, 5, 1)]
    b = torch.tensor(boxes, dtype=torch.float)[None]
    iou = pairwise_box_iou(b)
    torch.testing.assert_close(iou[0], box_iou(b[0], b[0]))
    assert iou[0, 0, 1].item() == pytest.approx(4 / 28) and iou[0, 0, 3].item() == 1.0
    # exclusive-end pixel boxes: the box IoU is the IoU of their rasterised masks
    torch.testing.assert_close(pairwise_mask_iou(_raster(boxes, 12, 12)), iou)
    # an empty box has IoU 0 with everything, itself included
    assert pairwise_box_iou(torch.tensor([[[1.0, 1.0, 1.0, 3.0]]])).item() == 0.0
