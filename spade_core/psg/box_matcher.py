"""Hungarian matching of instance queries to GT boxes with DETR's costs (class + L1 + GIoU), plus, for boxes
read off box-supervised masks, BoxInst's projection term; the box counterpart of
:class:`spade_core.psg.matcher.HungarianMatcher` (same conventions: scipy ``linear_sum_assignment`` per image,
``(pred_idx, gt_idx)`` LongTensors on the CPU, pred_idx ascending)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from spade_core.psg.box_losses import check_box_targets
from spade_core.psg.box_projection import pairwise_projection_cost
from spade_core.psg.matcher import hungarian_indices


def pairwise_l1_cost(pred_boxes: Tensor, tgt_boxes: Tensor) -> Tensor:
    """L1 distance between every prediction and every target box: ``[N,4]``, ``[S,4]`` -> ``[N,S]``."""
    return torch.cdist(pred_boxes.float(), tgt_boxes.float(), p=1)


def pairwise_giou_cost(pred_boxes: Tensor, tgt_boxes: Tensor) -> Tensor:
    """``-GIoU`` between every prediction and every target, normalised cxcywh ``[N,4]``, ``[S,4]`` -> ``[N,S]``
    (DETR's ``cost_giou``)."""
    a = box_convert(pred_boxes.float(), "cxcywh", "xyxy")
    b = box_convert(tgt_boxes.float(), "cxcywh", "xyxy")
    return -generalized_box_iou(a, b)


class BoxHungarianMatcher(nn.Module):
    """One-to-one assignment of queries to GT boxes minimising
    ``cost_class * (-p[gt class]) + cost_bbox * L1 + cost_giou * (-GIoU)`` per image (DETR: 1 / 5 / 2), plus
    ``cost_proj * projection dice`` (``box_projection.pairwise_projection_cost``) when mask logits are given.

    ``forward(class_logits [B,Q,C+1], pred_boxes [B,Q,4], targets: list[dict(labels LongTensor [S], boxes
    [S,4])], mask_logits [B,Q,H,W] | None) -> list[(pred_idx LongTensor [K], gt_idx LongTensor [K])]``,
    K = min(Q, S), pred_idx ascending; boxes normalised ``(cx, cy, w, h)`` (``BoxHead`` output,
    ``normalize_boxes`` targets).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 cost_proj: float = 5.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("BoxHungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_proj = cost_proj

    def cost_matrix(self, class_logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor,
                    mask_logits: Tensor | None = None) -> Tensor:
        """Cost ``[Q,S]`` for one image: class_logits ``[Q,C+1]``, pred_boxes ``[Q,4]``, labels ``[S]``, boxes
        ``[S,4]``, mask_logits ``[Q,H,W]`` or None (no projection term)."""
        prob = class_logits.float().softmax(-1)
        cost = (
            self.cost_class * -prob[:, labels]
            + self.cost_bbox * pairwise_l1_cost(pred_boxes, boxes)
            + self.cost_giou * pairwise_giou_cost(pred_boxes, boxes)
        )
        if mask_logits is not None and self.cost_proj:
            cost = cost + self.cost_proj * pairwise_projection_cost(mask_logits, boxes)
        return cost

    @torch.no_grad()
    def forward(self, class_logits: Tensor, pred_boxes: Tensor, targets: list[dict],
                mask_logits: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        if class_logits.shape[:2] != pred_boxes.shape[:2]:
            raise ValueError(
                f"class_logits {tuple(class_logits.shape)} and pred_boxes {tuple(pred_boxes.shape)} disagree on [B,Q]"
            )
        if mask_logits is not None and mask_logits.shape[:2] != pred_boxes.shape[:2]:
            raise ValueError(
                f"mask_logits {tuple(mask_logits.shape)} and pred_boxes {tuple(pred_boxes.shape)} disagree on [B,Q]"
            )
        check_box_targets(pred_boxes, targets)
        return hungarian_indices(targets, lambda b, t: self.cost_matrix(
            class_logits[b], pred_boxes[b], t["labels"].long().to(class_logits.device),
            t["boxes"].to(pred_boxes.device), None if mask_logits is None else mask_logits[b]))


__all__ = ["BoxHungarianMatcher", "pairwise_giou_cost", "pairwise_l1_cost"]
