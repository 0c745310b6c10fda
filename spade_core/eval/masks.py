"""Exact, vectorised IoU between boolean pixel masks.

Masks are bit-packed (64 pixels per ``uint64`` word) and intersections are population counts of the
bitwise AND, so an IoU costs ``H*W/64`` word operations instead of ``H*W`` byte operations, and no float
conversion of the masks is ever made. Areas and intersections are exact integers; the IoU is their quotient
in float64, which is bit-identical to ``np.count_nonzero(a & b) / (|a| + |b| - |a & b|)``. Two empty masks
give ``0 / 0 = NaN`` (as in OpenPSG), which never passes an ``>=`` threshold.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_iou_matrix", "pack_masks", "packed_pair_iou"]

_WORDS_PER_CHUNK = 1 << 21  # bound on the temporary [n, W] uint64 block (16 MiB)
_POPCOUNT_U8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    """Number of set bits per row of a ``uint64`` array ``[n, W]`` -> int64 ``[n]``."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    as_bytes = words.view(np.uint8).reshape(words.shape[0], -1)
    return _POPCOUNT_U8[as_bytes].sum(axis=1, dtype=np.int64)


def pack_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bit-pack boolean masks.

    Args:
        masks: bool ``[N, H, W]`` (or ``[N, L]``).

    Returns:
        ``(packed, areas)``: ``packed`` uint64 ``[N, ceil(H*W/64)]`` (padding bits are zero), ``areas`` int64
        ``[N]`` (pixel counts).
    """
    masks = np.asarray(masks)
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must be a boolean array, got dtype {masks.dtype}")
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape [N, H, W] or [N, L], got {masks.shape}")
    flat = masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:])))
    packed = np.packbits(flat, axis=1)  # [N, ceil(L/8)] uint8
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    packed = np.ascontiguousarray(packed).view(np.uint64)
    return packed, _popcount_rows(packed)


def packed_pair_iou(
    packed_a: np.ndarray,
    areas_a: np.ndarray,
    packed_b: np.ndarray,
    areas_b: np.ndarray,
    index_a: np.ndarray,
    index_b: np.ndarray,
) -> np.ndarray:
    """IoU of the mask pairs ``(a[index_a[n]], b[index_b[n]])`` from :func:`pack_masks` outputs.

    Args:
        packed_a, areas_a: ``[Na, W]`` uint64 and ``[Na]`` int64.
        packed_b, areas_b: ``[Nb, W]`` uint64 and ``[Nb]`` int64 (same ``W``: same mask size).
        index_a, index_b: int ``[n]`` pair indices.

    Returns:
        float64 ``[n]``; NaN where both masks are empty.
    """
    if packed_a.shape[1] != packed_b.shape[1]:
        raise ValueError(f"packed masks differ in size: {packed_a.shape[1]} vs {packed_b.shape[1]} words")
    index_a = np.asarray(index_a, dtype=np.int64)
    index_b = np.asarray(index_b, dtype=np.int64)
    if index_a.shape != index_b.shape or index_a.ndim != 1:
        raise ValueError(f"index_a and index_b must be 1-D of equal length, got {index_a.shape} and "
                         f"{index_b.shape}")
    inter = np.empty(index_a.shape[0], dtype=np.int64)
    step = max(1, _WORDS_PER_CHUNK // max(1, packed_a.shape[1]))
    for start in range(0, index_a.shape[0], step):
        ia, ib = index_a[start : start + step], index_b[start : start + step]
        inter[start : start + step] = _popcount_rows(packed_a[ia] & packed_b[ib])
    union = areas_a[index_a] + areas_b[index_b] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def mask_iou_matrix(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """All-pairs mask IoU.

    Args:
        masks_a: bool ``[Na, H, W]``.
        masks_b: bool ``[Nb, H, W]``.

    Returns:
        float64 ``[Na, Nb]``; NaN where both masks are empty.
    """
    masks_a, masks_b = np.asarray(masks_a), np.asarray(masks_b)
    if masks_a.shape[1:] != masks_b.shape[1:]:
        raise ValueError(f"mask sizes differ: masks_a {masks_a.shape[1:]} vs masks_b {masks_b.shape[1:]}")
    packed_a, areas_a = pack_masks(masks_a)
    packed_b, areas_b = pack_masks(masks_b)
    ia, ib = np.meshgrid(np.arange(len(areas_a)), np.arange(len(areas_b)), indexing="ij")
    iou = packed_pair_iou(packed_a, areas_a, packed_b, areas_b, ia.ravel(), ib.ravel())
    return iou.reshape(len(areas_a), len(areas_b))
