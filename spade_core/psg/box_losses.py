"""DETR box losses over Hungarian-matched queries: L1 and generalised IoU on normalised ``(cx, cy, w, h)``
boxes, each summed over the matched pairs and divided by the number of GT boxes (DETR ``loss_boxes``; weights
5 and 2 are applied by the caller)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss

from spade_core.psg.matcher import instance_normaliser, matched_pairs


def check_box_targets(pred_boxes: Tensor, targets: list[dict]) -> None:
    """Raise ValueError unless ``pred_boxes`` is ``[B,Q,4]`` and ``targets`` has one dict per image with
    ``labels [S]`` and ``boxes [S,4]``."""
    if pred_boxes.dim() != 3 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"pred_boxes must be [B,Q,4], got shape {tuple(pred_boxes.shape)}")
    if len(targets) != pred_boxes.shape[0]:
        raise ValueError(f"targets: expected {pred_boxes.shape[0]} entries (one per image), got {len(targets)}")
    for b, t in enumerate(targets):
        labels, boxes = t["labels"], t["boxes"]
        if boxes.dim() != 2 or boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"targets[{b}]: boxes must be [S,4] with S = len(labels) = {labels.shape[0]}, got {tuple(boxes.shape)}"
            )


def box_l1_loss(src: Tensor, tgt: Tensor, num_boxes: float) -> Tensor:
    """``sum |src - tgt| / num_boxes`` over all pairs and the 4 coordinates; ``[K,4]``, ``[K,4]`` -> scalar."""
    return F.l1_loss(src, tgt.to(src.dtype), reduction="sum") / num_boxes


def box_giou_loss(src: Tensor, tgt: Tensor, num_boxes: float) -> Tensor:
    """``sum (1 - GIoU(src_k, tgt_k)) / num_boxes`` for paired normalised cxcywh boxes ``[K,4]``, ``[K,4]``."""
    a = box_convert(src, "cxcywh", "xyxy")
    b = box_convert(tgt.to(src.dtype), "cxcywh", "xyxy")
    return generalized_box_iou_loss(a, b, reduction="sum") / num_boxes


def box_losses(
    pred_boxes: Tensor,
    targets: list[dict],
    indices: list[tuple[Tensor, Tensor]],
    num_boxes: float | None = None,
) -> dict[str, Tensor]:
    """DETR's box losses for one decoder output.

    Args:
        pred_boxes: ``[B,Q,4]`` normalised ``(cx, cy, w, h)`` (``BoxHead`` output).
        targets: per image ``dict(labels [S], boxes [S,4])``, boxes normalised ``(cx, cy, w, h)``
            (``normalize_boxes``).
        indices: matcher output, per image ``(pred_idx [K], gt_idx [K])``.
        num_boxes: normaliser; default the number of GT boxes in the batch (min 1). Under DDP pass the mean over
            ranks, as for ``mask_losses``' ``num_masks``.
    Returns:
        ``dict(loss_bbox, loss_giou)``: sums over matched pairs / num_boxes (zero, with a graph to
        ``pred_boxes``, when nothing is matched).
    """
    check_box_targets(pred_boxes, targets)
    if len(indices) != len(targets):
        raise ValueError(f"indices: expected {len(targets)} entries, got {len(indices)}")
    num_boxes = instance_normaliser(targets, num_boxes)
    src, tgt = matched_pairs(pred_boxes, targets, "boxes", indices)
    if src.shape[0] == 0:
        zero = pred_boxes.sum() * 0.0
        return {"loss_bbox": zero, "loss_giou": zero}
    return {"loss_bbox": box_l1_loss(src, tgt, num_boxes), "loss_giou": box_giou_loss(src, tgt, num_boxes)}


__all__ = ["box_giou_loss", "box_l1_loss", "box_losses", "check_box_targets"]
