"""DETR-style box prediction for the instance decoder (Carion et al., ECCV 2020), and the box conversions
the box heads, losses, matcher and graph share.

Box conventions: the head predicts **normalised** ``(cx, cy, w, h)`` in ``[0, 1]`` (fractions of the image
width / height, as DETR); targets are given the same way (:func:`normalize_boxes` turns pixel xyxy boxes into
them); losses and costs work on the normalised boxes; :func:`denormalize_boxes` turns predictions back into
pixel ``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from spade_core.psg.instance_decoder import MLP


class BoxHead(nn.Module):
    """DETR's ``bbox_embed``: ``MLP(D, D, 4, num_layers)`` (ReLU between layers) then a sigmoid.

    `forward(query_feats [B,Q,D]) -> boxes [B,Q,4]` normalised ``(cx, cy, w, h)`` in ``(0, 1)``. Apply the
    same head to every decoder output (final and aux) for deep supervision, as DETR.
    """

    def __init__(self, hidden_dim: int, num_layers: int = 3):
        super().__init__()
        if hidden_dim < 1 or num_layers < 1:
            raise ValueError(f"hidden_dim and num_layers must be >= 1, got {hidden_dim}, {num_layers}")
        self.mlp = MLP(hidden_dim, hidden_dim, 4, num_layers)

    def forward(self, query_feats: Tensor) -> Tensor:
        if query_feats.dim() != 3:
            raise ValueError(f"query_feats must be [B,Q,D], got shape {tuple(query_feats.shape)}")
        return self.mlp(query_feats).sigmoid()


def _size(image_size: tuple[int, int] | Tensor, ref: Tensor) -> Tensor:
    """``(H, W)`` -> the scale ``[W, H, W, H]`` (broadcast over the box rows) on ``ref``'s device/dtype."""
    hw = torch.as_tensor(image_size, dtype=ref.dtype, device=ref.device)
    if hw.shape[-1] != 2:
        raise ValueError(f"image_size must be (H, W) (or [...,2]), got shape {tuple(hw.shape)}")
    return torch.stack([hw[..., 1], hw[..., 0], hw[..., 1], hw[..., 0]], dim=-1)


def normalize_boxes(boxes_xyxy: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Pixel ``(x1, y1, x2, y2)`` ``[..., 4]`` in an image of ``image_size = (H, W)`` -> normalised
    ``(cx, cy, w, h)`` ``[..., 4]`` (the DETR target format). Float."""
    boxes = boxes_xyxy.float()
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [..., 4], got shape {tuple(boxes.shape)}")
    return box_convert(boxes / _size(image_size, boxes), "xyxy", "cxcywh")


def denormalize_boxes(boxes_cxcywh: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Normalised ``(cx, cy, w, h)`` ``[..., 4]`` -> pixel ``(x1, y1, x2, y2)`` in an image of
    ``image_size = (H, W)`` (or a ``[..., 2]`` tensor of sizes broadcasting over the leading dims)."""
    if boxes_cxcywh.shape[-1] != 4:
        raise ValueError(f"boxes must be [..., 4], got shape {tuple(boxes_cxcywh.shape)}")
    return box_convert(boxes_cxcywh, "cxcywh", "xyxy") * _size(image_size, boxes_cxcywh)


__all__ = ["BoxHead", "denormalize_boxes", "normalize_boxes"]
