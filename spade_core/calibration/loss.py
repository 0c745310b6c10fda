"""Calibration loss (student vs teacher cross-attention maps) and the map-correlation metric."""

from __future__ import annotations

import torch


def _check(student_maps: torch.Tensor, teacher_maps: torch.Tensor, token_mask: torch.Tensor) -> None:
    if student_maps.ndim != 4:
        raise ValueError(f"student_maps: expected [B,T,h,w], got {tuple(student_maps.shape)}")
    if teacher_maps.shape != student_maps.shape:
        raise ValueError(f"teacher_maps: shape {tuple(teacher_maps.shape)} != student_maps {tuple(student_maps.shape)}")
    if token_mask.shape != student_maps.shape[:2] or token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask: expected a bool [B,T] = {tuple(student_maps.shape[:2])}, "
                         f"got {token_mask.dtype} {tuple(token_mask.shape)}")


def calibration_loss(
    student_maps: torch.Tensor, teacher_maps: torch.Tensor, token_mask: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """``L_cal = (1/B) sum_i lam * mean_{t valid, p} |A_i[t,p] - A'_i[t,p]|``, a scalar.

    student_maps, teacher_maps: [B,T,h,w] head-averaged cross-attention maps (teacher cast to the student dtype);
    token_mask: [B,T] bool, True for the tokens of image i's prompt (tokens past its length are False).
    Per image, the mean runs over its n_i valid tokens and all h*w pixels (divisor n_i*h*w). The image means are
    summed and divided by B, all images counted: an image with no valid token contributes 0 (never NaN).
    """
    _check(student_maps, teacher_maps, token_mask)
    if lam < 0:
        raise ValueError(f"lam: expected >= 0, got {lam}")
    b, _, h, w = student_maps.shape
    diff = (student_maps - teacher_maps.to(student_maps.dtype)).abs().sum((-2, -1))  # [B,T]
    mask = token_mask.to(diff.dtype)
    per_image = (diff * mask).sum(1) / (mask.sum(1).clamp(min=1) * h * w)
    return lam * per_image.sum() / b


@torch.no_grad()
def map_correlation(
    student_maps: torch.Tensor, teacher_maps: torch.Tensor, token_mask: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Mean per-token Pearson correlation over pixels, averaged over valid tokens: [B].

    A token whose student or teacher map is constant has correlation 0; an image with no valid token gets NaN
    (there is nothing to measure; aggregate with ``nanmean``).
    """
    _check(student_maps, teacher_maps, token_mask)
    s = student_maps.double().flatten(2)
    t = teacher_maps.double().flatten(2)
    s = s - s.mean(-1, keepdim=True)
    t = t - t.mean(-1, keepdim=True)
    corr = (s * t).sum(-1) / ((s.square().sum(-1) * t.square().sum(-1)).sqrt() + eps)  # [B,T]
    mask = token_mask.double()
    n = mask.sum(1)
    out = (corr * mask).sum(1) / n.clamp(min=1)
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return out.to(student_maps.dtype if student_maps.is_floating_point() else torch.float32)
