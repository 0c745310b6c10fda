"""Image tensors for the models: every stage feeds the UNet/VAE and CLIP the same way."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """``image`` [H,W,3] uint8 -> [3,size,size] float32 in [0,1] (bilinear, antialiased resize)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


def vae_range(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> [-1,1] as the VAE expects."""
    return images * 2.0 - 1.0
