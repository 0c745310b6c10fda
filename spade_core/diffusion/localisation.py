"""Does a cross-attention map point at the object its token names? Pointing game and top-k IoU.

A token's map [ha, wa] is bilinearly resized to the mask's size [H, W] first.

* pointing game: the map's argmax pixel lies inside the object's mask (a hit is 1, a miss 0);
* top-k IoU: IoU between the mask and the ``k`` highest-scoring pixels of the map, ``k`` = the mask's area
  (parameter-free: a perfect map scores 1), or ``fraction * H * W`` when ``fraction`` is given.

A query is one token kind for one object in one prompt: the map of a phrase (or any multi-token span) is the
mean of its tokens' maps. :func:`score_queries` averages hits and IoUs per kind (e.g. ``colour``, ``shape``,
``phrase``, ``predicate``). A word names a category, not an instance: :func:`category_masks` gives each segment
the union of all segments of its category, the target of the pointing game's rule (a hit on any instance).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LocalisationQuery:
    """``kind``: a label (``"colour"``, ...); ``tokens``: token positions whose maps are averaged;
    ``mask``: [H, W] bool target region."""

    kind: str
    tokens: list[int]
    mask: Tensor


def category_masks(masks: Tensor, categories: Sequence[int]) -> Tensor:
    """masks [S, H, W] bool of S segments, ``categories`` [S] -> [S, H, W] bool: segment i's entry is the union
    of the masks of every segment whose category equals segment i's."""
    if masks.ndim != 3 or masks.shape[0] != len(categories):
        raise ValueError(f"masks must be [S, H, W] with one category per segment, got {tuple(masks.shape)} "
                         f"and {len(categories)} categories")
    cats = torch.as_tensor(list(categories))
    same = (cats[:, None] == cats[None, :]).float()  # [S, S]
    return (same @ masks.flatten(1).float() > 0).view(masks.shape)


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[N, ha, wa] -> [N, H, W] float32."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _check(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if maps.ndim == 2:
        maps = maps[None]
    if masks.ndim == 2:
        masks = masks[None].expand(maps.shape[0], -1, -1)
    if maps.ndim != 3 or masks.ndim != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps must be [N, ha, wa] and masks [N, H, W] (or [H, W]), got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")
    masks = masks.bool()
    if not masks.flatten(1).any(1).all():
        raise ValueError("every mask must contain at least one pixel")
    return _resize(maps, tuple(masks.shape[-2:])), masks


def pointing_hits(maps: Tensor, masks: Tensor) -> Tensor:
    """maps [N, ha, wa] (or [ha, wa]), masks [N, H, W] (or one [H, W]) -> [N] float: 1 where argmax in mask."""
    maps, masks = _check(maps, masks)
    top = maps.flatten(1).argmax(dim=1)
    return masks.flatten(1).gather(1, top[:, None])[:, 0].float()


def topk_iou(maps: Tensor, masks: Tensor, fraction: float | None = None) -> Tensor:
    """maps [N, ha, wa], masks [N, H, W] -> [N] float: IoU of the top-k map pixels with the mask.

    ``k`` = each mask's area, or ``round(fraction * H * W)`` (at least 1) with ``fraction`` in (0, 1].
    """
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    maps, masks = _check(maps, masks)
    flat, m = maps.flatten(1), masks.flatten(1)
    ks = m.sum(1) if fraction is None else torch.full((m.shape[0],), max(1, round(fraction * m.shape[1])))
    order = flat.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    top = ranks < ks[:, None]
    inter, union = (top & m).sum(1).float(), (top | m).sum(1).float()
    return inter / union


def score_queries(maps: Tensor, queries: list[LocalisationQuery],
                  fraction: float | None = None) -> dict[str, dict[str, list[float]]]:
    """One prompt's maps [T, ha, wa] and its queries -> ``{kind: {"pointing": [...], "iou": [...]}}``."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be [T, ha, wa], got {tuple(maps.shape)}")
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"pointing": [], "iou": []})
    if not queries:
        return dict(out)
    for q in queries:
        if not q.tokens or min(q.tokens) < 0 or max(q.tokens) >= maps.shape[0]:
            raise ValueError(f"query tokens must be non-empty positions in [0, {maps.shape[0]}), got {q.tokens}")
    span = torch.stack([maps[q.tokens].mean(0) for q in queries])
    masks = torch.stack([q.mask.bool() for q in queries])
    hits, ious = pointing_hits(span, masks), topk_iou(span, masks, fraction)
    for q, h, i in zip(queries, hits.tolist(), ious.tolist()):
        out[q.kind]["pointing"].append(h)
        out[q.kind]["iou"].append(i)
    return dict(out)


def merge_scores(total: dict[str, dict[str, list[float]]], new: dict[str, dict[str, list[float]]]) -> None:
    """Append ``new``'s per-kind lists to ``total`` in place."""
    for kind, d in new.items():
        t = total.setdefault(kind, {"pointing": [], "iou": []})
        t["pointing"] += d["pointing"]
        t["iou"] += d["iou"]


def summarise(scores: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """``{kind: {"pointing": mean, "iou": mean, "n": count}}``."""
    return {k: {"pointing": sum(d["pointing"]) / len(d["pointing"]), "iou": sum(d["iou"]) / len(d["iou"]),
                "n": len(d["pointing"])} for k, d in scores.items() if d["pointing"]}
