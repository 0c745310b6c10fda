"""Boxes from box-supervised masks: BoxInst's projection term (Tian et al., CVPR 2021, eq. 2), the outside-box
negatives of the box tightness prior (Hsu et al., NeurIPS 2019) and the tight box of a predicted mask, so a box
model can localise at the stride-4 mask resolution instead of regressing four numbers from a query feature.

A mask whose projections onto the x and y axes (max over the other axis) match those of a box has that box as
its tight box. :func:`box_projection_loss` is BoxInst's ``L_proj = Dice(max_y m, max_y b) + Dice(max_x m,
max_x b)`` over matched (mask, box) pairs; :func:`pairwise_projection_cost` is the same term for every query and
GT box (a Hungarian matching cost); :func:`box_outside_loss` pushes every pixel outside the box to background
(the projections alone tolerate a stray blob in a row or column the box already covers, e.g. a mask spilling onto
a second object below the first, and a tight box does not); :func:`boxes_from_mask_logits` reads the box back off
a predicted mask's :func:`largest_component` (a stray blob of the mask elsewhere in the image would otherwise
stretch the box to reach it). BoxInst's pairwise colour-affinity term only shapes the mask inside its box; it is
not needed for the box and not implemented.

Boxes are normalised ``(cx, cy, w, h)`` as everywhere in the box task (``box_head``); masks are logits at any
resolution ``H x W``; a box is rasterised at that resolution with ``box_graph.box_masks`` (pixel centres).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert

from spade_core.psg.box_graph import box_masks
from spade_core.psg.mask_losses import dice_loss
from spade_core.psg.matcher import pairwise_dice_cost


def axis_projections(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Max-projections of masks (logits or probabilities) ``[..., H, W]`` onto the x axis ``[..., W]`` (max over
    rows) and the y axis ``[..., H]`` (max over columns). For logits, ``sigmoid`` commutes with the max."""
    if masks.dim() < 2:
        raise ValueError(f"masks must be [..., H, W], got shape {tuple(masks.shape)}")
    return masks.amax(dim=-2), masks.amax(dim=-1)


def box_projection_targets(boxes: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The axis projections ``([S, W], [S, H])`` (0/1 float) of normalised cxcywh boxes ``[S, 4]`` rasterised
    at ``size = (H, W)``: which columns and which rows the box covers."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [S,4], got shape {tuple(boxes.shape)}")
    raster = box_masks(box_convert(boxes.float(), "cxcywh", "xyxy")[None], size)[0]  # [S,H,W]
    return axis_projections(raster)


def _check_matched(mask_logits: Tensor, boxes: Tensor) -> None:
    """Raise ValueError unless ``mask_logits`` is ``[K,H,W]`` and ``boxes`` ``[K,4]``."""
    if mask_logits.dim() != 3 or boxes.shape != (mask_logits.shape[0], 4):
        raise ValueError(f"mask_logits [K,H,W] and boxes [K,4] expected, got {tuple(mask_logits.shape)} and "
                         f"{tuple(boxes.shape)}")


def box_projection_loss(mask_logits: Tensor, boxes: Tensor, num_boxes: float) -> Tensor:
    """BoxInst's projection loss, ``sum_k [Dice(proj_x m_k, proj_x b_k) + Dice(proj_y m_k, proj_y b_k)] /
    num_boxes`` (``mask_losses.dice_loss`` on the projections).

    Args:
        mask_logits: ``[K, H, W]`` logits of the matched queries.
        boxes: ``[K, 4]`` their GT boxes, normalised cxcywh.
        num_boxes: normaliser (GT boxes in the batch; the DDP mean under DDP).
    Returns a scalar (0 with a graph to ``mask_logits`` when K = 0).
    """
    _check_matched(mask_logits, boxes)
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    px, py = axis_projections(mask_logits)
    tx, ty = box_projection_targets(boxes.to(mask_logits.device), tuple(mask_logits.shape[-2:]))
    return dice_loss(px, tx, num_boxes) + dice_loss(py, ty, num_boxes)


def box_outside_loss(mask_logits: Tensor, boxes: Tensor, num_boxes: float) -> Tensor:
    """Outside-box negatives: per mask, the mean sigmoid BCE toward 0 over the pixels outside its box, summed and
    divided by ``num_boxes``; ``[K, H, W]`` logits, ``[K, 4]`` normalised cxcywh -> scalar (0 with a graph when
    K = 0 or a box covers the whole mask)."""
    _check_matched(mask_logits, boxes)
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    inside = box_masks(box_convert(boxes.float().to(mask_logits.device), "cxcywh", "xyxy")[None],
                       tuple(mask_logits.shape[-2:]))[0]
    outside = (1 - inside).flatten(1)
    bce = F.softplus(mask_logits.flatten(1).float())  # BCE with target 0
    per_mask = (bce * outside).sum(1) / outside.sum(1).clamp(min=1)
    return per_mask.sum() / num_boxes


def pairwise_projection_cost(mask_logits: Tensor, boxes: Tensor) -> Tensor:
    """The projection term between every query mask ``[Q, H, W]`` (logits) and every GT box ``[S, 4]``
    (normalised cxcywh) -> ``[Q, S]`` (sum of the x- and y-projection dice costs, each in [0, 1])."""
    px, py = axis_projections(mask_logits.float())
    tx, ty = box_projection_targets(boxes.to(mask_logits.device), tuple(mask_logits.shape[-2:]))
    return pairwise_dice_cost(px, tx) + pairwise_dice_cost(py, ty)


def _extent(projection: Tensor, upsample: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[N, L]`` projected logits -> (lo, hi) normalised extent of the part > 0 after linear upsampling by
    ``upsample``, and whether there is any; ``[N]`` each."""
    fine = F.interpolate(projection[:, None].float(), scale_factor=upsample, mode="linear", align_corners=False)[:, 0]
    on = fine > 0
    j = torch.arange(fine.shape[-1], device=fine.device)
    first = torch.where(on, j, fine.shape[-1]).amin(dim=-1)
    last = torch.where(on, j, -1).amax(dim=-1)
    scale = float(fine.shape[-1])
    return first / scale, (last + 1) / scale, on.any(dim=-1)


def largest_component(masks: Tensor) -> Tensor:
    """Each mask's largest 8-connected component: ``[N, H, W]`` bool -> ``[N, H, W]`` bool (empty stays empty;
    of equally large components the one holding the last pixel in raster order).

    Every foreground pixel starts with its own label (raster index + 1), and labels spread by 3x3 max-pooling
    within the foreground until none changes (at most the longest path inside a component, in pixels), so each
    component ends up labelled by its largest index; then the most frequent label of each mask is kept.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N,H,W], got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if n == 0 or h * w == 0:
        return masks.bool()
    fg = masks.bool()
    index = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float32).view(1, h, w)  # exact to 2**24
    labels = torch.where(fg, index, torch.zeros((), device=masks.device))
    for _ in range(h * w):
        grown = torch.where(fg, F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0], labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.long().flatten(1)  # [N, H*W], 0 = background
    offsets = torch.arange(n, device=masks.device)[:, None] * (h * w + 1)
    counts = torch.bincount((flat + offsets).flatten(), minlength=n * (h * w + 1)).view(n, h * w + 1)
    counts[:, 0] = 0
    best = counts.flip(-1).argmax(dim=-1)  # flipped: of tied labels the largest
    best = h * w - best
    return fg & (flat == best[:, None]).view(n, h, w)


def boxes_from_mask_logits(mask_logits: Tensor, fallback: Tensor, upsample: int = 4) -> Tensor:
    """The tight box of each predicted mask's largest component (sigmoid > 0.5), normalised cxcywh.

    The mask is cut to its :func:`largest_component` (the logits of the other foreground pixels are negated),
    then its axis projections are upsampled linearly by ``upsample`` (sub-pixel box edges at the cost of 1-D
    interpolation, not of upsampling the masks) and the box spans the part above 0.

    Args:
        mask_logits: ``[B, Q, H, W]``.
        fallback: ``[B, Q, 4]`` normalised cxcywh boxes for queries whose mask is empty (the box head's).
        upsample: >= 1.
    Returns ``[B, Q, 4]`` normalised cxcywh, no gradient.
    """
    if mask_logits.dim() != 4 or fallback.shape != (*mask_logits.shape[:2], 4):
        raise ValueError(f"mask_logits [B,Q,H,W] and fallback [B,Q,4] expected, got {tuple(mask_logits.shape)} "
                         f"and {tuple(fallback.shape)}")
    if upsample < 1:
        raise ValueError(f"upsample must be >= 1, got {upsample}")
    b, q = mask_logits.shape[:2]
    logits = mask_logits.detach().flatten(0, 1)
    stray = (logits > 0) & ~largest_component(logits > 0)
    px, py = axis_projections(torch.where(stray, -logits, logits))
    x1, x2, any_x = _extent(px, upsample)
    y1, y2, any_y = _extent(py, upsample)
    boxes = box_convert(torch.stack([x1, y1, x2, y2], dim=-1), "xyxy", "cxcywh").view(b, q, 4)
    found = (any_x & any_y).view(b, q, 1)
    return torch.where(found, boxes.to(fallback.dtype), fallback.detach())


__all__ = [
    "axis_projections",
    "box_outside_loss",
    "box_projection_loss",
    "box_projection_targets",
    "boxes_from_mask_logits",
    "largest_component",
    "pairwise_projection_cost",
]
