"""Image tensors for the models: every stage feeds the UNet/VAE and CLIP the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pipeline.datasets.index import IndexRecord


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """``image`` [H,W,3] uint8 -> [3,size,size] float32 in [0,1] (bilinear, antialiased resize)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


def load_image_tensor(record: IndexRecord, size: int) -> torch.Tensor:
    """A dataset record's image, decoded and resized: [3,size,size] float32 in [0,1] (:func:`to_tensor`)."""
    return to_tensor(record.load_image(), size)


def load_images(records: Sequence[IndexRecord], size: int) -> torch.Tensor:
    """A batch of dataset records' images: [B,3,size,size] float32 in [0,1]."""
    return torch.stack([load_image_tensor(r, size) for r in records])


def vae_range(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> [-1,1] as the VAE expects."""
    return images * 2.0 - 1.0
