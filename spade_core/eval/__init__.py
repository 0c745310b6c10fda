"""Scene-graph evaluation: exact PSG SGDet R@K / mR@K, open-vocabulary restrictions, spatial DR/NDR split."""

from .masks import mask_iou_matrix, pack_masks, packed_pair_iou
from .sgdet import evaluate, match_image, novel_triplet_mask, restrict_gt
from .spatial import boxes_from_masks, distant_pair_mask, spatial_split

__all__ = [
    "boxes_from_masks",
    "distant_pair_mask",
    "evaluate",
    "mask_iou_matrix",
    "match_image",
    "novel_triplet_mask",
    "pack_masks",
    "packed_pair_iou",
    "restrict_gt",
    "spatial_split",
]
