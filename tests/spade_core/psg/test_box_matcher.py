import pytest
import torch

from spade_core.psg.box_matcher import BoxHungarianMatcher, pairwise_giou_cost, pairwise_l1_cost

G0, G1 = [0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]


def _case():
    """Query 0 sits on GT 0's box but is confident of GT 1's class; query 1 the other way round."""
    boxes = torch.tensor([[G0, G1]])
    logits = torch.tensor([[[0.0, 4.0, -4.0], [4.0, 0.0, -4.0]]])  # 2 classes + no object
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([G0, G1])}]
    return logits, boxes, targets


def test_pairwise_costs_hand_values():
    pred, tgt = torch.tensor([G0]), torch.tensor([G0, G1])
    torch.testing.assert_close(pairwise_l1_cost(pred, tgt), torch.tensor([[0.0, 1.0]]))
    # G0 = xyxy [.15,.15,.35,.35], G1 = [.65,.65,.85,.85]: disjoint, union .08, enclosing .7^2 = .49
    giou = -(0.49 - 0.08) / 0.49
    torch.testing.assert_close(pairwise_giou_cost(pred, tgt), torch.tensor([[-1.0, -giou]]))


def test_box_costs_win_over_class_with_detr_weights():
    logits, boxes, targets = _case()
    ((rows, cols),) = BoxHungarianMatcher()(logits, boxes, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1]
    ((rows, cols),) = BoxHungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)(logits, boxes, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_cost_matrix_is_the_weighted_sum():
    logits, boxes, targets = _case()
    m = BoxHungarianMatcher(1.0, 5.0, 2.0)
    cost = m.cost_matrix(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    prob = logits[0].softmax(-1)
    l1 = pairwise_l1_cost(boxes[0], targets[0]["boxes"])
    giou = pairwise_giou_cost(boxes[0], targets[0]["boxes"])
    torch.testing.assert_close(cost, -prob[:, :2] + 5 * l1 + 2 * giou)
    assert cost[0, 0] == pytest.approx(-prob[0, 0].item() - 2.0, abs=1e-6)


def test_more_gt_than_queries_and_empty_images():
    logits = torch.zeros(2, 1, 3)
    boxes = torch.tensor([[G1], [G0]])
    targets = [
        {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([G0, G1])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    out = BoxHungarianMatcher()(logits, boxes, targets)
    assert out[0][0].tolist() == [0] and out[0][1].tolist() == [1]
    assert out[1][0].numel() == 0 and out[1][0].dtype == torch.long


def test_matcher_rejects_bad_inputs():
    with pytest.raises(ValueError, match="all costs"):
        BoxHungarianMatcher(0, 0, 0)
    logits, boxes, targets = _case()
    with pytest.raises(ValueError, match="disagree"):
        BoxHungarianMatcher()(logits[:, :1], boxes, targets)
