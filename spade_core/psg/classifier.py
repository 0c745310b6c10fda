"""Open-vocabulary classifier (docs/DESIGN.md §4.3.6; paper Table 7).

Logits are cosine similarities between projected decoder outputs and CLIP text embeddings of the class names,
times a learnable temperature, so the vocabulary is chosen at call time (train on the base classes, test on
all of them, or on a user's list). A learned "no object" / "no relation" embedding adds a last column.

Second opinion: `mask_pool` averages the dense CLIP feature map inside each predicted mask (objects) or inside
the union of subject and object masks (predicates); `pooled_logits` classifies it against the same text
embeddings; `fuse_probabilities` combines both, `P = P_diff^alpha * P_pool^(1-alpha)`, renormalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_text(text_emb: torch.Tensor, embed_dim: int) -> None:
    if text_emb.dim() != 2 or text_emb.shape[1] != embed_dim or text_emb.shape[0] < 1:
        raise ValueError(f"text_emb must be [C,{embed_dim}] with C >= 1, got {tuple(text_emb.shape)}")


class OpenVocabClassifier(nn.Module):
    """Cosine classifier over an arbitrary vocabulary plus a learned "none" class.

    `forward(h [B, N, in_dim], text_emb [C, E] L2-normalised) -> logits [B, N, C+1]` (last column = none).
    """

    def __init__(self, in_dim: int, embed_dim: int, init_temperature: float = 1 / 0.07, max_temperature: float = 100.0):
        super().__init__()
        if init_temperature <= 0 or init_temperature > max_temperature:
            raise ValueError(f"init_temperature must be in (0, {max_temperature}], got {init_temperature}")
        self.embed_dim = embed_dim
        self.max_temperature = max_temperature
        self.proj = nn.Linear(in_dim, embed_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.none_embed = nn.Parameter(torch.randn(embed_dim) / math.sqrt(embed_dim))

    @property
    def temperature(self) -> torch.Tensor:
        """Current temperature (a 0-d tensor with gradient), clamped to `max_temperature`."""
        return self.log_temperature.exp().clamp(max=self.max_temperature)

    def forward(self, h: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        _check_text(text_emb, self.embed_dim)
        x = F.normalize(self.proj(h), dim=-1)
        classes = torch.cat([F.normalize(text_emb.to(x.dtype), dim=-1), F.normalize(self.none_embed, dim=0)[None]])
        return self.temperature * x @ classes.t()


def mask_pool(dense: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mask-weighted mean of a dense feature map.

    Args:
        dense: `[B, E, h, w]` dense (CLIP) features.
        masks: `[B, N, Hm, Wm]` soft or hard masks in [0, 1]; resized to `(h, w)` (area averaging when shrinking,
            bilinear when enlarging).
    Returns:
        `[B, N, E]`; an empty mask gives zeros.
    """
    if dense.dim() != 4 or masks.dim() != 4 or dense.shape[0] != masks.shape[0]:
        raise ValueError(
            f"dense must be [B,E,h,w] and masks [B,N,Hm,Wm], got {tuple(dense.shape)}, {tuple(masks.shape)}"
        )
    h, w = dense.shape[-2:]
    m = masks.to(dense.dtype)
    if m.shape[-2:] != (h, w):
        if m.shape[-2] >= h and m.shape[-1] >= w:
            m = F.interpolate(m, size=(h, w), mode="area")
        else:
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    m = m.flatten(2)  # [B,N,hw]
    pooled = m @ dense.flatten(2).transpose(1, 2)  # [B,N,E]
    return pooled / m.sum(dim=-1, keepdim=True).clamp_min(eps)


def pooled_logits(pooled: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Cosine logits of pooled features: `pooled [B, N, E]`, `text_emb [C, E]` -> `[B, N, C]` (x temperature).
    A zero (empty-mask) feature gives all-zero logits."""
    _check_text(text_emb, pooled.shape[-1])
    return temperature * F.normalize(pooled, dim=-1) @ F.normalize(text_emb.to(pooled.dtype), dim=-1).t()


def fuse_probabilities(
    p_diff: torch.Tensor | None, p_pool: torch.Tensor | None, alpha: float = 0.34, eps: float = 1e-8
) -> torch.Tensor:
    """Geometric fusion `P = p_diff^alpha * p_pool^(1-alpha)`, renormalised over the last (class) axis.

    Args:
        p_diff: `[B, N, C]` probabilities from the decoder (diffusion-feature) classifier, or None if off.
        p_pool: `[B, N, C]` probabilities from the mask-pooled CLIP features, or None if off.
        alpha: weight of `p_diff`, in [0, 1].
    Returns:
        `[B, N, C]`; if one source is None it is returned alone (unchanged).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if p_diff is None and p_pool is None:
        raise ValueError("fuse_probabilities needs at least one of p_diff, p_pool")
    if p_pool is None:
        return p_diff
    if p_diff is None:
        return p_pool
    if p_diff.shape != p_pool.shape:
        raise ValueError(f"p_diff {tuple(p_diff.shape)} and p_pool {tuple(p_pool.shape)} must have the same shape")
    log_p = alpha * p_diff.clamp_min(eps).log() + (1.0 - alpha) * p_pool.clamp_min(eps).log()
    return log_p.softmax(dim=-1)
