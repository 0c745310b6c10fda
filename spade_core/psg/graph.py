"""Spatial-semantic instance graph `G` (docs/DESIGN.md §4.3.3).

`G[i, j] = min(1, spatial_ij + semantic_ij)` over the N predicted instances of an image, where

- spatial_ij = 1 if mask i, dilated by `dilation` pixels (a (2d+1)x(2d+1) max-pool, i.e. Chebyshev distance
  <= d), overlaps mask j (symmetric by construction, and symmetrised anyway);
- semantic_ij = 1 if cosine(H_o[i], H_o[j]) > `semantic_threshold`.

The graph is a 0/1 constant: no gradient flows through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dilate_masks(masks: torch.Tensor, dilation: int) -> torch.Tensor:
    """Binary dilation with a square (2*dilation+1) structuring element.

    Args:
        masks: `[B, N, H, W]` float 0/1.
        dilation: radius in pixels (>= 0).
    Returns:
        `[B, N, H, W]` float 0/1.
    """
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    if dilation == 0:
        return masks
    b, n, h, w = masks.shape
    out = F.max_pool2d(masks.reshape(b * n, 1, h, w), kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return out.reshape(b, n, h, w)


@torch.no_grad()
def spatial_semantic_graph(
    masks: torch.Tensor,
    query_feats: torch.Tensor,
    dilation: int,
    semantic_threshold: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build the spatial-semantic graph of each image.

    Args:
        masks: `[B, Q, H, W]` predicted instance masks, bool, or float (foreground where > 0.5).
        query_feats: `[B, Q, D]` instance query features `H_o`.
        dilation: pixels by which masks are dilated before testing for contact.
        semantic_threshold: cosine similarity above which two instances are semantically connected.
        valid: optional `[B, Q]` bool; rows and columns of invalid queries are zero.
    Returns:
        `G`: `[B, Q, Q]` float 0/1, symmetric, zero diagonal, no gradient (dtype of `query_feats`).
    """
    if masks.dim() != 4:
        raise ValueError(f"masks must be [B,Q,H,W], got shape {tuple(masks.shape)}")
    if query_feats.dim() != 3 or query_feats.shape[:2] != masks.shape[:2]:
        raise ValueError(
            f"query_feats must be [B,Q,D] with B,Q = {tuple(masks.shape[:2])}, got {tuple(query_feats.shape)}"
        )
    m = masks if masks.dtype == torch.bool else masks > 0.5
    m = m.to(torch.float32).flatten(2)  # [B,Q,HW]
    dil = dilate_masks(m.view(masks.shape), dilation).flatten(2)
    spatial = torch.bmm(dil, m.transpose(1, 2)) > 0  # dilated i overlaps j
    return combine_spatial_semantic(spatial | spatial.transpose(1, 2), query_feats, semantic_threshold, valid)


@torch.no_grad()
def pairwise_mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of masks of an image: `[B, N, H, W]` bool, or float (foreground where > 0.5) ->
    `[B, N, N]` float (0 where both masks are empty)."""
    if masks.dim() != 4:
        raise ValueError(f"masks must be [B,N,H,W], got shape {tuple(masks.shape)}")
    m = (masks if masks.dtype == torch.bool else masks > 0.5).to(torch.float32).flatten(2)  # [B,N,HW]
    inter = torch.bmm(m, m.transpose(1, 2))
    area = m.sum(-1)
    union = area[:, :, None] + area[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


@torch.no_grad()
def combine_spatial_semantic(
    spatial: torch.Tensor,
    query_feats: torch.Tensor,
    semantic_threshold: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """`G = min(1, spatial + semantic)` from the spatial edges (of masks or of boxes), with zero diagonal.

    Args:
        spatial: `[B, Q, Q]` bool spatial edges.
        query_feats: `[B, Q, D]` instance query features `H_o` (semantic edges: cosine > `semantic_threshold`).
        semantic_threshold: cosine similarity above which two instances are semantically connected.
        valid: optional `[B, Q]` bool; rows and columns of invalid queries are zero.
    Returns:
        `G`: `[B, Q, Q]` float 0/1, zero diagonal, no gradient (dtype of `query_feats`).
    """
    b, q = spatial.shape[:2]
    feats = F.normalize(query_feats.float(), dim=-1)
    semantic = torch.bmm(feats, feats.transpose(1, 2)) > semantic_threshold
    g = spatial.bool() | semantic
    g &= ~torch.eye(q, dtype=torch.bool, device=g.device)
    if valid is not None:
        if valid.shape != (b, q):
            raise ValueError(f"valid must be [B,Q] = {(b, q)}, got {tuple(valid.shape)}")
        vb = valid.bool()
        g &= vb[:, :, None] & vb[:, None, :]
    return g.to(query_feats.dtype)
