"""Box versions of the spatial-semantic graph's spatial edge (docs/DESIGN.md §4.3.3) and of the regions the
pooled CLIP features are taken over (VG: the model predicts boxes, not masks).

Spatial edge (:func:`box_adjacency`): boxes i and j are connected when box i, dilated by ``dilation`` pixels,
overlaps box j: on both axes ``max(x1_i, x1_j) - min(x2_i, x2_j) < dilation``. For integer pixel boxes with
exclusive ends (pixels ``x1 .. x2 - 1``) this is exactly :func:`spatial_semantic_graph`'s rule on the
rasterised boxes (Chebyshev distance between the pixel sets ``<= dilation``): ``dilation = 0`` needs a
shared pixel (boxes that merely touch, ``x2_i == x1_j``, are not connected), ``dilation = 1`` connects
touching boxes, ``dilation = d`` boxes with up to ``d - 1`` empty pixels between them.

Regions (:func:`box_masks`, :func:`pair_union_boxes`, :func:`union_box_masks`): boxes rasterised at a
given resolution, to be fed to :func:`spade_core.psg.classifier.mask_pool` (the box region of an object; the
union box = smallest box enclosing subject and object of a pair).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

from spade_core.psg.graph import combine_spatial_semantic
from spade_core.psg.relations import gather_pairs


def box_adjacency(boxes: Tensor, dilation: float) -> Tensor:
    """Whether dilated box i overlaps box j (module doc), boxes and ``dilation`` in the same (pixel) unit.

    Args:
        boxes: ``[B, N, 4]`` ``(x1, y1, x2, y2)``.
        dilation: >= 0.
    Returns:
        bool ``[B, N, N]``, symmetric; the diagonal is True for boxes of positive size (or any box when
        ``dilation > 0``).
    """
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B,N,4], got shape {tuple(boxes.shape)}")
    b = boxes.float()
    lo = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])  # [B,N,N,2]
    hi = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    return ((lo - hi) < dilation).all(dim=-1)


@torch.no_grad()
def box_spatial_semantic_graph(
    boxes: Tensor,
    query_feats: Tensor,
    dilation: int,
    semantic_threshold: float,
    valid: Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """:func:`spade_core.psg.graph.spatial_semantic_graph` with the spatial edge from boxes.

    Args:
        boxes: ``[B, Q, 4]`` normalised ``(cx, cy, w, h)`` (``BoxHead`` output) when ``size`` is given, which
            scales them to pixel ``(x1, y1, x2, y2)`` of an ``size = (H, W)`` frame (use the mask / feature
            resolution the mask version's dilation refers to); with ``size=None``, pixel ``(x1, y1, x2, y2)``.
        query_feats: ``[B, Q, D]`` instance query features ``H_o``.
        dilation: pixels of that frame (:func:`box_adjacency`).
        semantic_threshold: cosine similarity above which two instances are semantically connected.
        valid: optional ``[B, Q]`` bool; rows and columns of invalid queries are zero.
    Returns:
        ``G``: ``[B, Q, Q]`` float 0/1, symmetric, zero diagonal, no gradient (dtype of ``query_feats``).
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B,Q,4], got shape {tuple(boxes.shape)}")
    if query_feats.dim() != 3 or query_feats.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"query_feats must be [B,Q,D] with B,Q = {tuple(boxes.shape[:2])}, got {tuple(query_feats.shape)}"
        )
    xyxy = boxes.float()
    if size is not None:
        h, w = size
        xyxy = box_convert(xyxy, "cxcywh", "xyxy") * xyxy.new_tensor([w, h, w, h])
    return combine_spatial_semantic(box_adjacency(xyxy, dilation), query_feats, semantic_threshold, valid)


def pairwise_box_iou(boxes_xyxy: Tensor) -> Tensor:
    """IoU of every pair of boxes of an image: ``[B, N, 4]`` ``(x1, y1, x2, y2)`` (any unit) -> ``[B, N, N]``
    (0 where the union is empty)."""
    if boxes_xyxy.dim() != 3 or boxes_xyxy.shape[-1] != 4:
        raise ValueError(f"boxes_xyxy must be [B,N,4], got shape {tuple(boxes_xyxy.shape)}")
    b = boxes_xyxy.float()
    area = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)  # [B,N]
    lo = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])
    hi = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    union = area[:, :, None] + area[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _axis_cover(lo: Tensor, hi: Tensor, n: int, soft: bool) -> Tensor:
    """Per-pixel coverage ``[..., n]`` of the intervals ``[lo, hi)`` (pixel units) on an axis of n pixels."""
    j = torch.arange(n, device=lo.device, dtype=lo.dtype)
    if soft:
        return (torch.minimum(hi[..., None], j + 1) - torch.maximum(lo[..., None], j)).clamp(0, 1)
    centre = j + 0.5
    inside = (centre >= lo[..., None]) & (centre < hi[..., None])
    # an interval containing no pixel centre gets the pixel containing its midpoint
    mid = ((lo + hi) / 2).floor().clamp(0, n - 1)
    inside |= ~inside.any(-1, keepdim=True) & (j == mid[..., None])
    return inside.to(lo.dtype)


def box_masks(boxes_xyxy: Tensor, size: tuple[int, int], soft: bool = False) -> Tensor:
    """Rasterise normalised boxes at a resolution.

    Args:
        boxes_xyxy: ``[B, N, 4]`` normalised ``(x1, y1, x2, y2)`` (fractions of width / height; use
            ``torchvision.ops.box_convert(b, "cxcywh", "xyxy")`` on ``BoxHead`` output).
        size: ``(H, W)`` of the masks (e.g. the dense CLIP map's).
        soft: False: 1 where the pixel centre lies in the box (on an axis where the box covers no pixel centre,
            the pixel containing its midpoint, so no box of the image gives an empty mask); True: the fraction
            of each pixel the box covers (differentiable in the boxes).
    Returns:
        ``[B, N, H, W]`` float in [0, 1], separable (row coverage x column coverage).
    """
    if boxes_xyxy.dim() != 3 or boxes_xyxy.shape[-1] != 4:
        raise ValueError(f"boxes_xyxy must be [B,N,4], got shape {tuple(boxes_xyxy.shape)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    b = boxes_xyxy.float()
    cols = _axis_cover(b[..., 0] * w, b[..., 2] * w, w, soft)  # [B,N,W]
    rows = _axis_cover(b[..., 1] * h, b[..., 3] * h, h, soft)  # [B,N,H]
    return rows[..., :, None] * cols[..., None, :]


def pair_union_boxes(boxes_xyxy: Tensor, pairs: Tensor) -> Tensor:
    """Smallest box enclosing subject and object: ``boxes_xyxy [B, Q, 4]``, ``pairs [B, P, 2]`` (subject,
    object query indices) -> ``[B, P, 4]`` (same units as the input)."""
    subj, obj = gather_pairs(boxes_xyxy, pairs)
    return torch.cat([torch.minimum(subj[..., :2], obj[..., :2]), torch.maximum(subj[..., 2:], obj[..., 2:])], -1)


def union_box_masks(boxes_xyxy: Tensor, pairs: Tensor, size: tuple[int, int], soft: bool = False) -> Tensor:
    """:func:`box_masks` of :func:`pair_union_boxes`: ``[B, Q, 4]`` normalised xyxy, ``[B, P, 2]`` ->
    ``[B, P, H, W]`` (the box counterpart of ``pair_union_masks``, for pooling predicate features)."""
    return box_masks(pair_union_boxes(boxes_xyxy, pairs), size, soft)


__all__ = [
    "box_adjacency",
    "box_masks",
    "box_spatial_semantic_graph",
    "pair_union_boxes",
    "pairwise_box_iou",
    "union_box_masks",
]
