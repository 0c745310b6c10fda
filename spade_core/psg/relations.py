"""Relation queries (docs/DESIGN.md §4.3.5): pair selection from the RGT similarity `S`, the pair projection, and the
relation decoder `Phi_rel` (3 transformer decoder layers over the feature pyramid `F`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spade_core.psg.position import sine_position_encoding


@torch.no_grad()
def select_relation_pairs(
    S: torch.Tensor,
    eta: float,
    max_pairs: int,
    valid: torch.Tensor | None = None,
    min_pairs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ordered instance pairs `(i, j)`, `i != j`, to become relation queries.

    Candidates (both queries valid, `i != j`) are ranked by `S_ij` descending, ties broken by the flat index
    `i * Q + j` (lowest first), so the output is deterministic. Pairs with `S_ij > eta` come first, capped at
    `max_pairs` (eq. 13). When fewer than `min_pairs` pass, the next best candidates fill up (the fallback) to
    `min_pairs`; so `eta` decides which pairs become queries whenever more than `min_pairs` candidates exist.

    Args:
        S: `[B, Q, Q]` cosine similarities of the RGT outputs.
        eta: similarity threshold.
        max_pairs: `P`, the number of pair slots per image.
        valid: optional `[B, Q]` bool; invalid queries never take part in a pair.
        min_pairs: minimum number of valid pairs per image (<= max_pairs; the fallback). None = `max_pairs`:
            every slot is filled whenever enough candidates exist, and `eta` only orders the pairs.
    Returns:
        `pairs`: `[B, P, 2]` long (subject, object) query indices; `pair_valid`: `[B, P]` bool, False for slots
        that were not selected (their pairs are `(0, 0)`).
    """
    if S.dim() != 3 or S.shape[1] != S.shape[2]:
        raise ValueError(f"S must be [B,Q,Q], got shape {tuple(S.shape)}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    min_pairs = max_pairs if min_pairs is None else min_pairs
    if not 0 <= min_pairs <= max_pairs:
        raise ValueError(f"min_pairs must be in [0, max_pairs={max_pairs}], got {min_pairs}")
    b, q, _ = S.shape
    cand = ~torch.eye(q, dtype=torch.bool, device=S.device)[None].expand(b, q, q)
    if valid is not None:
        if valid.shape != (b, q):
            raise ValueError(f"valid must be [B,Q] = {(b, q)}, got {tuple(valid.shape)}")
        cand = cand & valid[:, :, None].bool() & valid[:, None, :].bool()
    scores = S.float().masked_fill(~cand, -math.inf).flatten(1)  # [B,Q*Q]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    k = min(max_pairs, q * q)
    top = order[:, :k]
    top_cand = cand.flatten(1).gather(1, top)
    passed = top_cand & (scores.gather(1, top) > eta)
    rank = torch.arange(k, device=S.device)[None]
    keep = top_cand & (passed | (rank < min_pairs))
    pairs = torch.zeros(b, max_pairs, 2, dtype=torch.long, device=S.device)
    pair_valid = torch.zeros(b, max_pairs, dtype=torch.bool, device=S.device)
    pairs[:, :k, 0] = torch.where(keep, top // q, 0)
    pairs[:, :k, 1] = torch.where(keep, top % q, 0)
    pair_valid[:, :k] = keep
    return pairs, pair_valid


@torch.no_grad()
def suppress_duplicate_queries(iou: torch.Tensor, objectness: torch.Tensor, valid: torch.Tensor,
                               threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression over the valid queries before pair selection (eq. 13).

    A query-based detector can give one object to several queries (the matcher trains only one of them, the
    others keep near-identical features); their pairs would take relation-query slots from real pairs. Queries
    are visited by objectness (descending, ties by index); a valid query is dropped when its IoU with an
    already kept valid query exceeds `threshold`.

    Args:
        iou: `[B, Q, Q]` pairwise IoU of the query regions (boxes or masks), symmetric.
        objectness: `[B, Q]` the visiting order (higher first).
        valid: `[B, Q]` bool, the queries taking part.
        threshold: IoU above which a query duplicates a kept one (1.0 or more: nothing is dropped).
    Returns:
        `[B, Q]` bool, `valid` without the duplicates.
    """
    if iou.dim() != 3 or iou.shape[1] != iou.shape[2] or iou.shape[:2] != objectness.shape:
        raise ValueError(f"iou must be [B,Q,Q] and objectness [B,Q], got {tuple(iou.shape)} and "
                         f"{tuple(objectness.shape)}")
    keep = valid.clone().bool()
    order = objectness.argsort(dim=1, descending=True, stable=True)
    rows = torch.arange(iou.shape[0], device=iou.device)
    kept = torch.zeros_like(keep)
    for i in order.unbind(1):  # Q steps, each over the batch
        duplicate = ((iou[rows, i] > threshold) & kept).any(dim=1)
        keep[rows, i] &= ~duplicate
        kept[rows, i] = keep[rows, i]
    return keep


def gather_pairs(x: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subject and object rows of `x [B, Q, ...]` for `pairs [B, P, 2]`: two tensors `[B, P, ...]`."""
    b = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[b, pairs[..., 0]], x[b, pairs[..., 1]]


def pair_union_masks(masks: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Union (element-wise max) of subject and object masks: `masks [B, Q, H, W]`, `pairs [B, P, 2]`
    -> `[B, P, H, W]` (for pooling predicate features)."""
    subj, obj = gather_pairs(masks, pairs)
    return torch.maximum(subj, obj)


class RelationQueryBuilder(nn.Module):
    """Relation query = projection of the concatenated subject and object nodes `[q_i; q_j]`.

    `forward(q [B, Q, D], pairs [B, P, 2]) -> [B, P, D]`.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        if pairs.dim() != 3 or pairs.shape[0] != q.shape[0] or pairs.shape[2] != 2:
            raise ValueError(f"pairs must be [B,P,2] with B = {q.shape[0]}, got {tuple(pairs.shape)}")
        subj, obj = gather_pairs(q, pairs)
        return self.norm(self.proj(torch.cat([subj, obj], dim=-1)))


class RelationDecoderLayer(nn.Module):
    """Self-attention among relation queries, cross-attention to memory, FFN; post-LayerNorm after each."""

    def __init__(self, dim: int, num_heads: int = 4, ffn_dim: int | None = None):
        super().__init__()
        ffn_dim = ffn_dim or 4 * dim
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, pad: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0])
        x = self.norm2(x + self.cross_attn(x, memory + memory_pos, memory, need_weights=False)[0])
        return self.norm3(x + self.ffn(x))


class RelationDecoder(nn.Module):
    """Relation decoder `Phi_rel`: `num_layers` decoder layers whose cross-attention sees all pyramid levels,
    flattened and concatenated, with a learned level embedding and a 2-D sine position embedding on the keys.

    `forward(rel_queries [B, P, D], pyramid list[[B, D, h_k, w_k]], query_valid [B, P] bool | None)
    -> H_r [B, P, D]`. Invalid (padding) relation queries are hidden from the self-attention keys.
    """

    def __init__(
        self, dim: int, num_layers: int = 3, num_heads: int = 4, num_levels: int = 4, ffn_dim: int | None = None
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.level_embed = nn.Parameter(torch.randn(num_levels, dim) * 0.02)
        self.layers = nn.ModuleList(RelationDecoderLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))

    def flatten_pyramid(self, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, sum h_k w_k, D]` memory and its position + level embedding (broadcast over B)."""
        if not pyramid or len(pyramid) > self.level_embed.shape[0]:
            raise ValueError(f"pyramid must have 1..{self.level_embed.shape[0]} levels, got {len(pyramid)}")
        mem, pos = [], []
        for lvl, f in enumerate(pyramid):
            if f.dim() != 4 or f.shape[1] != self.dim or f.shape[0] != pyramid[0].shape[0]:
                raise ValueError(f"pyramid level {lvl} must be [B,{self.dim},h,w], got {tuple(f.shape)}")
            h, w = f.shape[-2:]
            mem.append(f.flatten(2).transpose(1, 2))
            pe = sine_position_encoding(h, w, self.dim, f.device, centred=True).to(f.dtype)
            pos.append(pe + self.level_embed[lvl].to(f.dtype))
        return torch.cat(mem, dim=1), torch.cat(pos, dim=0)[None]

    def forward(
        self, rel_queries: torch.Tensor, pyramid: list[torch.Tensor], query_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        memory, pos = self.flatten_pyramid(pyramid)
        if memory.shape[0] != rel_queries.shape[0]:
            raise ValueError(f"batch mismatch: rel_queries {rel_queries.shape[0]}, pyramid {memory.shape[0]}")
        pad = None
        if query_valid is not None:
            # an image with no valid relation query attends to all of them (avoids an all-masked softmax)
            pad = ~query_valid.bool() & query_valid.bool().any(dim=1, keepdim=True)
        x = rel_queries
        for layer in self.layers:
            x = layer(x, memory, pos, pad)
        return x
