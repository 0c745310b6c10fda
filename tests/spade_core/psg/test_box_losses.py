import pytest
import torch

from spade_core.psg.box_losses import box_giou_loss, box_l1_loss, box_losses

# normalised cxcywh; xyxy A = [0, 0, .2, .2], B = [.1, 0, .3, .2] (IoU 1/3, enclosing = union -> GIoU 1/3),
# C = [0, 0, .1, .1], D = [.2, 0, .3, .1] (disjoint: IoU 0, union .02, enclosing .03 -> GIoU -1/3)
A, B = [0.1, 0.1, 0.2, 0.2], [0.2, 0.1, 0.2, 0.2]
C, D = [0.05, 0.05, 0.1, 0.1], [0.25, 0.05, 0.1, 0.1]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(
    ("src", "tgt", "giou"),
    [(A, A, 1.0), (A, B, 1 / 3), (C, D, -1 / 3)],
)
def test_giou_loss_hand_cases(src, tgt, giou):
    torch.testing.assert_close(box_giou_loss(t([src]), t([tgt]), 1.0), torch.tensor(1 - giou), atol=1e-5, rtol=0)


def test_l1_loss_sums_coordinates_and_normalises():
    # |A - B| = (.1, 0, 0, 0); |C - D| = (.2, 0, 0, 0)
    torch.testing.assert_close(box_l1_loss(t([A, C]), t([B, D]), 2.0), torch.tensor(0.15))


def test_box_losses_matched_pairs_normalised_by_gt_count():
    pred = t([[A, C, [0.5, 0.5, 0.5, 0.5]], [D, B, B]])  # [2,3,4]
    targets = [
        {"labels": torch.tensor([0, 1]), "boxes": t([B, D])},
        {"labels": torch.tensor([2]), "boxes": t([D])},
    ]
    # image 0: query 0 -> gt 0 (A vs B), query 1 -> gt 1 (C vs D); image 1: query 0 -> gt 0 (D vs D)
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0]))]
    out = box_losses(pred, targets, indices)
    torch.testing.assert_close(out["loss_bbox"], torch.tensor((0.1 + 0.2 + 0.0) / 3))
    torch.testing.assert_close(out["loss_giou"], torch.tensor((2 / 3 + 4 / 3 + 0.0) / 3), atol=1e-5, rtol=0)
    out2 = box_losses(pred, targets, indices, num_boxes=1.5)
    torch.testing.assert_close(out2["loss_bbox"], out["loss_bbox"] * 2)


def test_gradient_flows_through_box_losses():
    raw = torch.zeros(1, 2, 4, requires_grad=True)
    pred = raw.sigmoid()  # every box (.5, .5, .5, .5)
    targets = [{"labels": torch.tensor([0]), "boxes": t([A])}]
    out = box_losses(pred, targets, [(torch.tensor([1]), torch.tensor([0]))])
    (5 * out["loss_bbox"] + 2 * out["loss_giou"]).backward()
    assert raw.grad[0, 1].abs().sum() > 0
    assert raw.grad[0, 0].abs().sum() == 0  # unmatched query: no box loss


def test_no_match_gives_zero_with_graph_and_bad_targets_raise():
    raw = torch.zeros(1, 2, 4, requires_grad=True)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    none = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    out = box_losses(raw.sigmoid(), empty, [none])
    assert out["loss_bbox"] == 0 and out["loss_giou"] == 0
    out["loss_bbox"].backward()
    with pytest.raises(ValueError, match="boxes must be"):
        box_losses(raw.sigmoid(), [{"labels": torch.tensor([0]), "boxes": torch.zeros(2, 4)}], [none])
    with pytest.raises(ValueError, match="one per image"):
        box_losses(raw.sigmoid(), empty * 2, [none, none])
