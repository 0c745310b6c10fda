"""2-D sine/cosine position embeddings of a feature map's cells (DETR-style), one function for both decoders."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(
    h: int, w: int, dim: int, device=None, dtype=None, *, centred: bool = False
) -> Tensor:
    """2-D sine position embedding of an `h x w` grid -> `[h*w, dim]`: `dim/2` channels for y, then `dim/2` for x.

    Each axis has `dim/4` frequencies `10000^(-k/(dim/4))` applied to a coordinate scaled to `(0, 2 pi]`:

    * `centred=False` (DETR; the instance decoder): coordinate `(i + 1) / (n + 1e-6)`, channels `sin, cos`
      interleaved per frequency.
    * `centred=True` (the relation decoder): pixel centres `(i + 0.5) / n` (so the levels of a pyramid align),
      channels `[sin ..., cos ...]` in two blocks.

    `dim` must be divisible by 4 (an even sin/cos width per axis).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (an even sin/cos width per axis), got {dim}")
    n = dim // 4
    freq = 10000.0 ** (torch.arange(n, device=device, dtype=torch.float32) / n)
    if centred:
        freq = 1.0 / freq

    def axis(size: int) -> Tensor:  # [size, dim/2]
        i = torch.arange(size, device=device, dtype=torch.float32)
        if centred:
            angle = ((i + 0.5) / size * 2 * math.pi)[:, None] * freq
            return torch.cat([angle.sin(), angle.cos()], dim=-1)
        angle = ((i + 1) / (size + 1e-6) * (2 * math.pi))[:, None] / freq
        return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)

    y = axis(h)[:, None, :].expand(h, w, 2 * n)
    x = axis(w)[None, :, :].expand(h, w, 2 * n)
    pe = torch.cat((y, x), dim=-1).reshape(h * w, dim)
    return pe if dtype is None else pe.to(dtype)
