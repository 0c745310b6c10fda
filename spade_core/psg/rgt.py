"""Relation Graph Transformer (RGT, docs/DESIGN.md §4.3.4; paper Table 6).

Each `RelationGraphBlock` updates the N instance nodes `q [B, N, D]` given the 0/1 graph `G [B, N, N]`:

1. long-range context: multi-head attention of every node over its graph neighbours (LCNL, keys allowed where
   G = 1) and, separately, over its non-neighbours (LCNNL, keys allowed where G = 0, diagonal excluded), both
   added to the node: `q <- q + LCNL(q) + LCNNL(q)`. A node with no allowed key gets zeros (never NaN);
2. fusion: `q' = q + MLP([q; mean_neighbours(q); mean_non_neighbours(q)])` (an empty set has mean 0);
3. local context (LCL): a graph convolution with `A_hat = D^-1/2 (G + I) D^-1/2`: `q'' = q' + A_hat q' W`;
4. `LayerNorm(q'')`.

Switches: `use_lcnl=False` removes the neighbour attention and the neighbour mean in the fusion,
`use_lcnnl=False` the same for non-neighbours, `use_lcl=False` the graph convolution. Invalid (padded) nodes
are excluded from every neighbourhood, so they never influence valid nodes.
"""

from __future__ import annotations

import torch
from torch import nn


class GraphMaskedAttention(nn.Module):
    """Multi-head self-attention restricted to an allowed-key mask.

    `forward(x [B, N, D], allowed [B, N, N] bool) -> [B, N, D]`; `allowed[b, i, j]` says whether node i may
    attend to node j. Rows with no allowed key return exactly zero.
    """

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each [B,h,N,dh]
        scores = (q @ k.transpose(-1, -2)) * (d // h) ** -0.5
        m = allowed[:, None]  # [B,1,N,N]
        # A finite fill (not -inf) keeps fully masked rows NaN-free; multiplying by m zeroes them.
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
        attn = scores.softmax(dim=-1) * m
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(out) * allowed.any(dim=-1, keepdim=True).to(x.dtype)


def masked_mean(x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Mean of `x [B, N, D]` over the set `adj [B, N, N]` (0/1) of each node; zeros for an empty set."""
    adj = adj.to(x.dtype)
    return (adj @ x) / adj.sum(dim=-1, keepdim=True).clamp_min(1.0)


def normalized_adjacency(graph: torch.Tensor) -> torch.Tensor:
    """Symmetric-normalised adjacency with self loops, `D^-1/2 (G + I) D^-1/2`, for `graph [B, N, N]`."""
    a = graph + torch.eye(graph.shape[-1], dtype=graph.dtype, device=graph.device)
    dinv = a.sum(dim=-1).rsqrt()  # degree >= 1 thanks to the self loop
    return dinv[:, :, None] * a * dinv[:, None, :]


class RelationGraphBlock(nn.Module):
    """One RGT block: LCNL + LCNNL attention, fusion MLP, LCL graph convolution, LayerNorm.

    `forward(q [B, N, D], neighbours [B, N, N] bool, non_neighbours [B, N, N] bool, adj [B, N, N] float)
    -> [B, N, D]`. The masks are built once by `RelationGraphTransformer` (see `graph_masks`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        use_lcnl: bool = True,
        use_lcnnl: bool = True,
        use_lcl: bool = True,
    ):
        super().__init__()
        self.use_lcnl, self.use_lcnnl, self.use_lcl = use_lcnl, use_lcnnl, use_lcl
        self.lcnl = GraphMaskedAttention(dim, num_heads) if use_lcnl else None
        self.lcnnl = GraphMaskedAttention(dim, num_heads) if use_lcnnl else None
        hidden = int(dim * mlp_ratio)
        self.fusion = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.lcl = nn.Linear(dim, dim, bias=False) if use_lcl else None
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, q: torch.Tensor, neighbours: torch.Tensor, non_neighbours: torch.Tensor, adj: torch.Tensor
    ) -> torch.Tensor:
        update = torch.zeros_like(q)
        mean_nbr = torch.zeros_like(q)
        mean_non = torch.zeros_like(q)
        if self.lcnl is not None:
            update = update + self.lcnl(q, neighbours)
        if self.lcnnl is not None:
            update = update + self.lcnnl(q, non_neighbours)
        q = q + update
        if self.use_lcnl:
            mean_nbr = masked_mean(q, neighbours)
        if self.use_lcnnl:
            mean_non = masked_mean(q, non_neighbours)
        q = q + self.fusion(torch.cat([q, mean_nbr, mean_non], dim=-1))
        if self.lcl is not None:
            q = q + adj @ self.lcl(q)
        return self.norm(q)


def graph_masks(graph: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour / non-neighbour key masks and the GCN adjacency for `graph [B, N, N]`, `valid [B, N]`.

    Returns `(neighbours bool, non_neighbours bool, adj float)`, each `[B, N, N]`; invalid nodes belong to
    nobody's neighbourhood and have none of their own.
    """
    b, n, _ = graph.shape
    eye = torch.eye(n, dtype=torch.bool, device=graph.device)
    pair_ok = ~eye[None].expand(b, n, n)
    if valid is not None:
        pair_ok = pair_ok & valid[:, :, None] & valid[:, None, :]
    edge = graph > 0.5
    neighbours = edge & pair_ok
    non_neighbours = ~edge & pair_ok
    return neighbours, non_neighbours, normalized_adjacency(neighbours.float())


class RelationGraphTransformer(nn.Module):
    """Stack of `num_blocks` `RelationGraphBlock`s over the instance graph (`num_blocks = 0`: the identity, the
    no-RGT baseline of paper Table 6).

    `forward(q [B, Q, D], G [B, Q, Q] 0/1, valid [B, Q] bool | None) -> [B, Q, D]`.
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 8,
        num_heads: int = 4,
        use_lcnl: bool = True,
        use_lcnnl: bool = True,
        use_lcl: bool = True,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.blocks = nn.ModuleList(
            RelationGraphBlock(dim, num_heads, mlp_ratio, use_lcnl, use_lcnnl, use_lcl) for _ in range(num_blocks)
        )

    def forward(self, q: torch.Tensor, G: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if q.dim() != 3:
            raise ValueError(f"q must be [B,Q,D], got shape {tuple(q.shape)}")
        b, n, _ = q.shape
        if G.shape != (b, n, n):
            raise ValueError(f"G must be [B,Q,Q] = {(b, n, n)}, got {tuple(G.shape)}")
        if valid is not None and valid.shape != (b, n):
            raise ValueError(f"valid must be [B,Q] = {(b, n)}, got {tuple(valid.shape)}")
        neighbours, non_neighbours, adj = graph_masks(G.detach(), None if valid is None else valid.bool())
        adj = adj.to(q.dtype)
        for block in self.blocks:
            q = block(q, neighbours, non_neighbours, adj)
        return q
