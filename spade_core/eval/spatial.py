"""Spatial analysis of paper Table 4: distant (DR) vs non-distant (NDR) relations.

A GT relation is *distant* when the centres of its subject and object bounding boxes are more than
``frac`` (1/3) of the image width apart. "Apart" is the **Euclidean distance between box centres** (not the
horizontal offset), compared strictly (``>``). Which predicates count as spatial is the caller's choice
(ids are passed in; nothing is hard-coded here). Typical use with :mod:`spade_core.eval.sgdet`::

    boxes = boxes_from_masks(gt["masks"])
    dr, ndr = spatial_split(gt["relations"], boxes, width, spatial_predicates)
    evaluate(restrict_gt(gts, dr_list), preds, C)   # DR;  likewise NDR
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["boxes_from_masks", "distant_pair_mask", "spatial_split"]


def boxes_from_masks(masks: Any) -> np.ndarray:
    """Tight boxes of boolean masks in the COCO/PSG convention.

    Args:
        masks: bool ``[S, H, W]`` (numpy or torch).

    Returns:
        float64 ``[S, 4]`` ``(x1, y1, x2, y2)``: ``x1, y1`` the first column/row of the mask, ``x2, y2`` one
        past the last (exclusive, as PSG's ``bbox`` = COCO ``[x, y, x + w, y + h]``), so the centre is the
        centre of the covered pixel span. Empty masks give zeros.
    """
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"masks must be a bool array [S, H, W], got {masks.dtype} {masks.shape}")
    cols = masks.any(axis=1)  # [S, W]
    rows = masks.any(axis=2)  # [S, H]
    nonempty = cols.any(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    y1 = rows.argmax(axis=1)
    y2 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float64)
    boxes[~nonempty] = 0.0
    return boxes


def distant_pair_mask(relations: Any, boxes_xyxy: Any, image_width: float, frac: float = 1 / 3) -> np.ndarray:
    """Whether each relation's subject and object box centres are farther apart than ``frac * image_width``.

    Args:
        relations: int ``[R, 3]`` (subject index, object index, predicate).
        boxes_xyxy: ``[S, 4]`` boxes of the segments.
        image_width: image width in pixels.
        frac: fraction of the width (paper: 1/3).

    Returns:
        bool ``[R]``: Euclidean centre distance ``> frac * image_width``.
    """
    rel = np.asarray(relations, dtype=np.int64).reshape(-1, 3)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must have shape [S, 4], got {boxes.shape}")
    if image_width <= 0 or frac <= 0:
        raise ValueError(f"image_width and frac must be positive, got {image_width}, {frac}")
    if rel.size and (rel[:, :2].min() < 0 or rel[:, :2].max() >= boxes.shape[0]):
        raise ValueError(f"relations index segments outside [0, {boxes.shape[0]})")
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    delta = centres[rel[:, 0]] - centres[rel[:, 1]]
    return np.hypot(delta[:, 0], delta[:, 1]) > frac * image_width


def spatial_split(
    relations: Any,
    boxes_xyxy: Any,
    image_width: float,
    spatial_predicates: Sequence[int],
    frac: float = 1 / 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the distant (DR) and non-distant (NDR) relations among those with a spatial predicate.

    Returns:
        ``(dr, ndr)``, both bool ``[R]``; relations with a non-spatial predicate are in neither.
    """
    rel = np.asarray(relations, dtype=np.int64).reshape(-1, 3)
    spatial = np.isin(rel[:, 2], np.asarray(spatial_predicates, dtype=np.int64))
    distant = distant_pair_mask(rel, boxes_xyxy, image_width, frac)
    return spatial & distant, spatial & ~distant
