"""Inference post-processing of `SpadePSG` outputs: fused class probabilities, kept instances (masks or boxes),
ranked triplets (PSG: every (pair, predicate); VG: graph constraint, one predicate per pair).

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

from spade_core.eval.vg import graph_constraint_triplets
from spade_core.psg.box_head import denormalize_boxes
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


def all_predicate_triplets(obj_scores: Tensor, pairs: Tensor, ok: Tensor, pred_scores: Tensor,
                           max_triplets: int) -> Tensor:
    """Ranking without graph constraint (PSG protocol): every (pair, predicate) combination of the pairs `ok`
    `[P]`, score `s_subj * s_obj * s_pred`, top `max_triplets` (stable, descending). Float `[T,4]` rows
    `(subject, object, predicate, score)`, subject/object as query indices of `pairs [P,2]`."""
    subj, obj = pairs[:, 0], pairs[:, 1]
    scores = obj_scores[subj, None] * obj_scores[obj, None] * pred_scores.float()  # [P,C_pred]
    scores = scores.masked_fill(~ok[:, None], -1.0).flatten()
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[scores[order] >= 0][:max_triplets]
    num_pred = pred_scores.shape[1]
    pair_idx, pred = order // num_pred, order % num_pred
    return torch.stack([subj[pair_idx].float(), obj[pair_idx].float(), pred.float(), scores[order]], dim=1)


def rank_triplets(
    obj_scores: Tensor,
    pairs: Tensor,
    pair_valid: Tensor,
    pred_scores: Tensor,
    keep: Tensor,
    max_triplets: int,
    graph_constraint: bool = False,
) -> Tensor:
    """Top `max_triplets` triplets of one image, ranked by score (stable, descending).

    Without graph constraint (PSG protocol, `all_predicate_triplets`): every (pair, predicate) combination is a
    candidate. With graph constraint (VG protocol, `spade_core.eval.vg.graph_constraint_triplets`): one triplet
    per ordered pair, its argmax predicate.

    Args:
        obj_scores: `[Q]` instance scores.
        pairs: `[P,2]` (subject, object) query indices; pair_valid `[P]` bool.
        pred_scores: `[P,C_pred]` predicate scores.
        keep: `[Q]` bool, instances that are output (pairs touching others are dropped).
        max_triplets: T_max.
        graph_constraint: one predicate per pair (see above).
    Returns:
        float `[T,4]` rows `(subject, object, predicate, score)`, subject/object renumbered to the kept
        instances, `score = s_subj * s_obj * s_pred`, T <= max_triplets.
    """
    subj, obj = pairs[:, 0], pairs[:, 1]
    ok = pair_valid & keep[subj] & keep[obj] & (subj != obj)
    if graph_constraint:
        ranked = graph_constraint_triplets(obj_scores.float(), pred_scores.float(), pairs, ok, max_triplets)
    else:
        ranked = all_predicate_triplets(obj_scores, pairs, ok, pred_scores, max_triplets)
    return restrict_triplets(ranked, keep)


def restrict_triplets(triplets: Tensor, keep: Tensor) -> Tensor:
    """The triplets `[T, 4]` (or `[T, 3]`) whose subject and object are both among the kept instances
    `keep [Q]` (bool), in their order, with subject / object renumbered to the kept instances (the i-th kept
    instance becomes i)."""
    keep = keep.bool()
    new_index = torch.cumsum(keep.long(), 0) - 1
    s, o = triplets[:, 0].long(), triplets[:, 1].long()
    both = keep[s] & keep[o]
    rows = triplets[both].clone()
    rows[:, 0] = new_index[s[both]].to(rows.dtype)
    rows[:, 1] = new_index[o[both]].to(rows.dtype)
    return rows


def kept_instances(outputs: dict, b: int, keep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
    """The geometry of the kept queries `keep [Q]` of image b at the image size `(Hi, Wi)`: `boxes float [N,4]`
    pixel `(x1, y1, x2, y2)` when `outputs` has boxes (box task), else `masks bool [N,Hi,Wi]` (mask logits
    upsampled bilinearly, > 0, i.e. sigmoid > 0.5)."""
    if outputs.get("boxes") is not None:
        return {"boxes": denormalize_boxes(outputs["boxes"][b, keep].float(), size)}
    logits = outputs["mask_logits"][b, keep][None].float()
    return {"masks": F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0] > 0}


def postprocess(
    outputs: dict,
    image_sizes: list[tuple[int, int]],
    alpha: float,
    use_diffusion: bool = True,
    use_pooled: bool = True,
    max_triplets: int = 100,
    score_threshold: float = 0.0,
    graph_constraint: bool = False,
) -> list[dict[str, Tensor]]:
    """Per-image predictions from `SpadePSG.forward` outputs.

    Keeps the queries whose score is > `score_threshold`. Returns per image `dict(masks bool [N,Hi,Wi] | boxes
    float [N,4], labels long [N], scores [N], triplets float [T,4])` (`kept_instances`: boxes when `outputs`
    has `boxes`, else masks), triplets ranked as in `rank_triplets` (`graph_constraint`: one per pair).
    """
    obj = class_scores(outputs["class_logits"], outputs.get("pooled_obj_logits"), alpha, use_diffusion, use_pooled)
    rel = class_scores(outputs["rel_logits"], outputs.get("pooled_rel_logits"), alpha, use_diffusion, use_pooled)
    obj_score, labels = obj.max(-1)
    results = []
    for b, size in enumerate(image_sizes):
        keep = obj_score[b] > score_threshold
        triplets = rank_triplets(obj_score[b], outputs["pairs"][b], outputs["pair_valid"][b], rel[b], keep,
                                 max_triplets, graph_constraint)
        results.append({**kept_instances(outputs, b, keep, size), "labels": labels[b, keep],
                        "scores": obj_score[b, keep], "triplets": triplets})
    return results
