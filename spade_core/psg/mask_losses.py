"""Mask2Former instance losses `L_mask` over Hungarian-matched queries: CE (no-object weighted), BCE, dice.
The CE (`classification_loss`) is shared with the box task (DETR: CE + L1 + GIoU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spade_core.psg.matcher import check_targets, instance_normaliser, matched_pairs


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean sigmoid BCE, summed over masks and divided by `num_masks`.

    logits, targets `[N,...]` (targets in [0,1]) -> scalar.
    """
    loss = F.binary_cross_entropy_with_logits(logits.flatten(1), targets.flatten(1).to(logits.dtype), reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """`sum_n [1 - (2 |p_n t_n| + 1) / (|p_n| + |t_n| + 1)] / num_masks`, p = sigmoid(logits); `[N,...]`."""
    p = logits.flatten(1).sigmoid()
    t = targets.flatten(1).to(p.dtype)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return dice.sum() / num_masks


def resize_target_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize GT masks `[S,Hi,Wi]` (bool or float) to `size` as float in [0,1] (area average when shrinking,
    bilinear otherwise)."""
    if masks.shape[-2:] == torch.Size(size):
        return masks.float()
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    shrink = masks.shape[-2] >= size[0] and masks.shape[-1] >= size[1]
    mode = "area" if shrink else "bilinear"
    kwargs = {} if shrink else {"align_corners": False}
    return F.interpolate(masks[None].float(), size=size, mode=mode, **kwargs)[0].clamp(0, 1)


def classification_loss(
    class_logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]], no_object_weight: float = 0.1
) -> Tensor:
    """`L_ce` of one decoder output (the masks and the boxes task): matched queries target their GT label, the
    others "no object" (weight `no_object_weight`); class-weighted mean over all queries (F.cross_entropy with a
    weight vector).

    Args:
        class_logits: `[B,Q,C+1]`, last column = no object.
        targets: per image `dict(labels LongTensor [S], ...)`.
        indices: matcher output, per image `(pred_idx [K], gt_idx [K])`.
    Returns:
        scalar.
    """
    num_classes_p1 = class_logits.shape[-1]
    device = class_logits.device
    target_classes = torch.full(class_logits.shape[:2], num_classes_p1 - 1, dtype=torch.long, device=device)
    for b, (pred_idx, gt_idx) in enumerate(indices):
        target_classes[b, pred_idx.to(device)] = targets[b]["labels"].to(device)[gt_idx.to(device)].long()
    weight = torch.ones(num_classes_p1, device=device, dtype=class_logits.dtype)
    weight[-1] = no_object_weight
    return F.cross_entropy(class_logits.transpose(1, 2), target_classes, weight=weight)


def mask_losses(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: list[dict],
    indices: list[tuple[Tensor, Tensor]],
    no_object_weight: float = 0.1,
    num_masks: float | None = None,
) -> dict[str, Tensor]:
    """Mask2Former losses for one decoder layer.

    Args:
        class_logits: `[B,Q,C+1]`, last column = no object.
        mask_logits: `[B,Q,H,W]`.
        targets: per image `dict(labels LongTensor [S], masks [S,H,W])` at the mask resolution.
        indices: matcher output, per image `(pred_idx [K], gt_idx [K])`.
        no_object_weight: CE weight of the no-object class (unmatched queries' target).
        num_masks: normaliser of the BCE and dice sums; default = number of GT masks in the batch (min 1).
            Under DDP pass the mean over ranks so every rank uses the same one.

    Returns `dict(loss_ce, loss_bce, loss_dice)`: CE = `classification_loss`; BCE, dice = sums over matched
    pairs / num_masks.
    """
    check_targets(mask_logits, targets)
    if len(indices) != len(targets):
        raise ValueError(f"indices: expected {len(targets)} entries, got {len(indices)}")
    num_masks = instance_normaliser(targets, num_masks)
    loss_ce = classification_loss(class_logits, targets, indices, no_object_weight)
    src, tgt = matched_pairs(mask_logits, targets, "masks", indices)
    if src.shape[0] == 0:
        zero = mask_logits.sum() * 0.0
        return {"loss_ce": loss_ce, "loss_bce": zero, "loss_dice": zero}
    return {
        "loss_ce": loss_ce,
        "loss_bce": sigmoid_bce_loss(src, tgt, num_masks),
        "loss_dice": dice_loss(src, tgt, num_masks),
    }
