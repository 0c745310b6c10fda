"""Mask2Former-style instance decoder `Phi_ins` (Cheng et al., CVPR 2022).

`num_queries` learnable query features + learnable positional query embeddings pass through `num_layers`
decoder layers, each = masked cross-attention to one pyramid level (levels cycle coarse to fine over all
levels but the finest, which carries the mask features, as in Mask2Former) -> self-attention -> FFN (post-norm).
Before the first layer and after every layer the queries predict masks by a dot product of `mask_embed(q)`
with the per-pixel mask features; the prediction of one step restricts the next layer's cross-attention to
the pixels where it is > 0.5 (sigmoid), except for queries whose mask is empty, which attend everywhere.
With `masked_attention=False` the cross-attention is not masked (DETR; the box task, whose masks are not
supervised).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spade_core.psg.position import sine_position_encoding


@dataclass
class InstanceOutput:
    """Instance decoder output.

    query_feats: H_o `[B,Q,D]` after the last layer (layer-normed).
    mask_logits: `[B,Q,H,W]` after the last layer.
    aux: `(query_feats, mask_logits)` of the earlier predictions, for deep supervision: the one from the
        initial queries (before layer 1, as Mask2Former) and after layers 1 .. num_layers-1.
    """

    query_feats: Tensor
    mask_logits: Tensor
    aux: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DecoderLayer(nn.Module):
    """Cross-attention (to memory, with optional mask) -> self-attention -> FFN; post-norm residuals."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, q: Tensor, q_pos: Tensor, memory: Tensor, mem_pos: Tensor, attn_mask: Tensor | None = None
    ) -> Tensor:
        """q, q_pos `[B,Q,D]`; memory, mem_pos `[B,M,D]`; attn_mask bool `[B*heads,Q,M]` (True = blocked)."""
        out = self.cross_attn(q + q_pos, memory + mem_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        q = self.norms[0](q + self.dropout(out))
        qk = q + q_pos
        q = self.norms[1](q + self.dropout(self.self_attn(qk, qk, q, need_weights=False)[0]))
        return self.norms[2](q + self.dropout(self.ffn(q)))


class InstanceDecoder(nn.Module):
    """Mask2Former-style decoder over a feature pyramid.

    Args:
        hidden_dim: D (pyramid and mask-feature channels).
        num_queries: Q.
        num_layers: decoder layers (3 in SPADE).
        num_heads: attention heads.
        ffn_dim: FFN width (default 4 * D).
        num_levels: pyramid levels given to `forward` (the finest one is kept for the masks; the others are
            attended to, coarse to fine, cycling).
        dropout: attention / FFN dropout.
        masked_attention: restrict each layer's cross-attention to the previous mask prediction (Mask2Former);
            False: every query attends to every pixel (DETR).

    `forward(pyramid list[Tensor [B,D,h_k,w_k]] finest first, mask_features [B,D,H,W]) -> InstanceOutput`.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_queries: int,
        num_layers: int = 3,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        num_levels: int = 4,
        dropout: float = 0.0,
        masked_attention: bool = True,
    ):
        super().__init__()
        if hidden_dim % num_heads or hidden_dim % 4:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by 4 (sine position encoding) and by num_heads "
                f"({num_heads})"
            )
        if num_queries < 1 or num_layers < 1:
            raise ValueError(f"num_queries and num_layers must be >= 1, got {num_queries}, {num_layers}")
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.masked_attention = masked_attention
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(max(num_levels - 1, 1), hidden_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, num_heads, ffn_dim or 4 * hidden_dim, dropout) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, hidden_dim, 3)

    def predict_masks(self, q: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised query features `[B,Q,D]` and mask logits `[B,Q,H,W]` for raw queries q `[B,Q,D]`."""
        feats = self.decoder_norm(q)
        return feats, torch.einsum("bqd,bdhw->bqhw", self.mask_embed(feats), mask_features)

    def attention_mask(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Bool `[B*heads,Q,h*w]`, True where a query may not attend (prediction <= 0.5 at `size`)."""
        m = F.interpolate(mask_logits.detach().float(), size=size, mode="bilinear", align_corners=False)
        blocked = (m.sigmoid() < 0.5).flatten(2)
        blocked &= ~blocked.all(dim=-1, keepdim=True)  # an empty mask attends everywhere
        return blocked.repeat_interleave(self.num_heads, dim=0)

    def forward(self, pyramid: list[Tensor], mask_features: Tensor) -> InstanceOutput:
        if len(pyramid) != self.num_levels:
            raise ValueError(f"pyramid: expected {self.num_levels} levels, got {len(pyramid)}")
        if mask_features.dim() != 4 or mask_features.shape[1] != self.hidden_dim:
            raise ValueError(f"mask_features must be [B,{self.hidden_dim},H,W], got {tuple(mask_features.shape)}")
        levels = pyramid[1:][::-1] if len(pyramid) > 1 else list(pyramid)  # coarse to fine
        memories, positions, sizes = [], [], []
        for k, level in enumerate(levels):
            b, d, h, w = level.shape
            memories.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[k])
            positions.append(sine_position_encoding(h, w, d, level.device, level.dtype).expand(b, -1, -1))
            sizes.append((h, w))
        batch = mask_features.shape[0]
        q = self.query_feat.weight[None].expand(batch, -1, -1)
        q_pos = self.query_pos.weight[None].expand(batch, -1, -1)
        predictions = [self.predict_masks(q, mask_features)]
        for i, layer in enumerate(self.layers):
            k = i % len(levels)
            attn_mask = self.attention_mask(predictions[-1][1], sizes[k]) if self.masked_attention else None
            q = layer(q, q_pos, memories[k], positions[k], attn_mask)
            predictions.append(self.predict_masks(q, mask_features))
        feats, masks = predictions[-1]
        return InstanceOutput(query_feats=feats, mask_logits=masks, aux=predictions[:-1])
