"""Inference post-processing of `SpadePSG` outputs: fused class probabilities, kept instances, ranked triplets.

Class probabilities: the "none" column (no object / no relation) of the decoder classifier gives the
objectness `1 - p_none`; the class distribution is the fusion (`fuse_probabilities`) of the decoder
classifier's softmax over the real classes and the pooled-CLIP softmax, each source optional (paper Table 7).
Final per-class score = fused distribution x objectness, so with pooling off it equals Mask2Former's
`softmax(logits)[:, :C]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spade_core.psg.classifier import fuse_probabilities


def class_scores(
    logits: Tensor, pooled: Tensor | None, alpha: float, use_diffusion: bool = True, use_pooled: bool = True
) -> Tensor:
    """Per-class scores `[B,N,C]` from decoder logits `[B,N,C+1]` (last = none) and pooled logits `[B,N,C]`.

    `scores = fuse(softmax(logits[..., :C]), softmax(pooled), alpha) * (1 - softmax(logits)[..., C])`.
    """
    if not (use_diffusion or use_pooled):
        raise ValueError("class_scores: at least one of use_diffusion, use_pooled must be True")
    objectness = 1 - logits.float().softmax(-1)[..., -1:]
    p_diff = logits[..., :-1].float().softmax(-1) if use_diffusion else None
    p_pool = pooled.float().softmax(-1) if (use_pooled and pooled is not None) else None
    if p_diff is None and p_pool is None:
        raise ValueError("class_scores: use_diffusion is False but no pooled logits were given")
    return fuse_probabilities(p_diff, p_pool, alpha) * objectness


def rank_triplets(
    obj_scores: Tensor,
    pairs: Tensor,
    pair_valid: Tensor,
    pred_scores: Tensor,
    keep: Tensor,
    max_triplets: int,
) -> Tensor:
    """Top `max_triplets` (pair, predicate) combinations of one image, ranked by score (stable, descending).

    Args:
        obj_scores: `[Q]` instance scores.
        pairs: `[P,2]` (subject, object) query indices; pair_valid `[P]` bool.
        pred_scores: `[P,C_pred]` predicate scores.
        keep: `[Q]` bool, instances that are output (pairs touching others are dropped).
        max_triplets: T_max.
    Returns:
        float `[T,4]` rows `(subject, object, predicate, score)`, subject/object renumbered to the kept
        instances, `score = s_subj * s_obj * s_pred`, T <= max_triplets.
    """
    new_index = torch.cumsum(keep.long(), 0) - 1
    subj, obj = pairs[:, 0], pairs[:, 1]
    ok = pair_valid & keep[subj] & keep[obj] & (subj != obj)
    scores = obj_scores[subj, None] * obj_scores[obj, None] * pred_scores.float()  # [P,C_pred]
    scores = scores.masked_fill(~ok[:, None], -1.0).flatten()
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[scores[order] >= 0][:max_triplets]
    num_pred = pred_scores.shape[1]
    pair_idx, pred = order // num_pred, order % num_pred
    return torch.stack(
        [new_index[subj[pair_idx]].float(), new_index[obj[pair_idx]].float(), pred.float(), scores[order]], dim=1
    )


def postprocess(
    outputs: dict,
    image_sizes: list[tuple[int, int]],
    alpha: float,
    use_diffusion: bool = True,
    use_pooled: bool = True,
    max_triplets: int = 100,
    score_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Per-image predictions from `SpadePSG.forward` outputs.

    Keeps the queries whose score is > `score_threshold`; masks = mask logits upsampled bilinearly to the
    image size, > 0 (sigmoid > 0.5). Returns per image `dict(masks bool [N,Hi,Wi], labels long [N],
    scores [N], triplets float [T,4])`, triplets ranked as in `rank_triplets`.
    """
    obj = class_scores(outputs["class_logits"], outputs.get("pooled_obj_logits"), alpha, use_diffusion, use_pooled)
    rel = class_scores(outputs["rel_logits"], outputs.get("pooled_rel_logits"), alpha, use_diffusion, use_pooled)
    obj_score, labels = obj.max(-1)
    results = []
    for b, size in enumerate(image_sizes):
        keep = obj_score[b] > score_threshold
        logits = outputs["mask_logits"][b, keep][None].float()
        masks = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0] > 0
        triplets = rank_triplets(
            obj_score[b], outputs["pairs"][b], outputs["pair_valid"][b], rel[b], keep, max_triplets
        )
        results.append(
            {"masks": masks, "labels": labels[b, keep], "scores": obj_score[b, keep], "triplets": triplets}
        )
    return results
