"""Relation losses (docs/DESIGN.md §4.3.5): the relation-query consistency loss `L_rqc = ||S - Psi||_2` over matched
instance pairs, the predicate cross-entropy `L_rel` with a down-weighted "no relation" class, and the target
builders that turn a Hungarian matching plus GT triplets into per-pair targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def matched_gt_from_indices(indices: list[tuple[torch.Tensor, torch.Tensor]], num_queries: int) -> torch.Tensor:
    """Matcher output (per image `(pred_idx, gt_idx)`) -> `matched_gt [B, Q]` long, -1 for unmatched queries."""
    out = torch.full((len(indices), num_queries), -1, dtype=torch.long)
    for b, (pred_idx, gt_idx) in enumerate(indices):
        out[b, pred_idx.long().cpu()] = gt_idx.long().cpu()
    return out


def _check_matched(matched_gt: torch.Tensor, gt_relations: list[torch.Tensor]) -> None:
    if matched_gt.dim() != 2:
        raise ValueError(f"matched_gt must be [B,Q], got shape {tuple(matched_gt.shape)}")
    if len(gt_relations) != matched_gt.shape[0]:
        raise ValueError(f"gt_relations must have one entry per image ({matched_gt.shape[0]}), got {len(gt_relations)}")
    for b, rel in enumerate(gt_relations):
        if rel.numel() and (rel.dim() != 2 or rel.shape[1] != 3):
            raise ValueError(f"gt_relations[{b}] must be [R,3] (subject, object, predicate), got {tuple(rel.shape)}")


def _num_gt(matched: torch.Tensor, rel: torch.Tensor) -> int:
    n = int(matched.max().item()) + 1 if matched.numel() else 0
    return max(n, int(rel[:, :2].max().item()) + 1 if rel.numel() else 0, 1)


def relation_indicator(
    matched_gt: torch.Tensor,
    gt_relations: list[torch.Tensor],
    Q: int,
    symmetric: bool = False,
    also_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth pair indicator `Psi` over the queries.

    Args:
        matched_gt: `[B, Q]` long, the GT instance each query is matched to (-1 unmatched).
        gt_relations: per image `[R, 3]` long triplets `(gt_subject, gt_object, predicate)`.
        Q: number of queries (must equal `matched_gt.shape[1]`).
        symmetric: if True, `psi[i, j] = psi[j, i] = 1` for a relation in either direction (S is symmetric).
        also_valid: optional `[B, Q]` bool, queries whose pairs with each other are valid too though unmatched
            (e.g. the detected ones: their `psi` is 0, a negative pair).
    Returns:
        `psi [B, Q, Q]` float (1 where GT has a relation from the GT instance of i to that of j) and
        `valid [B, Q, Q]` bool (i != j, both queries matched or both `also_valid`).
    """
    _check_matched(matched_gt, gt_relations)
    if matched_gt.shape[1] != Q:
        raise ValueError(f"Q ({Q}) must equal matched_gt.shape[1] ({matched_gt.shape[1]})")
    b = matched_gt.shape[0]
    dev = matched_gt.device
    psi = torch.zeros(b, Q, Q, device=dev)
    matched = matched_gt >= 0
    eye = torch.eye(Q, dtype=torch.bool, device=dev)
    valid = matched[:, :, None] & matched[:, None, :] & ~eye
    for i, rel in enumerate(gt_relations):
        n = _num_gt(matched_gt[i], rel)
        table = torch.zeros(n, n, device=dev)
        if rel.numel():
            rel = rel.to(dev).long()
            table[rel[:, 0], rel[:, 1]] = 1.0
        if symmetric:
            table = torch.maximum(table, table.t())
        g = matched_gt[i].clamp_min(0)
        psi[i] = table[g[:, None], g[None, :]]
    psi = psi * valid  # 0 wherever a query is unmatched
    if also_valid is not None:
        extra = also_valid.to(dev).bool()
        valid = valid | (extra[:, :, None] & extra[:, None, :] & ~eye)
    return psi, valid


def pair_targets(
    pairs: torch.Tensor, matched_gt: torch.Tensor, gt_relations: list[torch.Tensor], num_predicates: int
) -> torch.Tensor:
    """Predicate target of each relation query.

    Args:
        pairs: `[B, P, 2]` long (subject query, object query).
        matched_gt: `[B, Q]` long, -1 for unmatched queries.
        gt_relations: per image `[R, 3]` long `(gt_subject, gt_object, predicate)`.
        num_predicates: `C_pred`; also the "no relation" target.
    Returns:
        `[B, P]` long: the predicate of the first GT triplet (in list order) from the GT instance of the subject
        query to that of the object query, or `num_predicates` when there is none or a query is unmatched.
    """
    _check_matched(matched_gt, gt_relations)
    b, p = pairs.shape[:2]
    dev = pairs.device
    matched_gt = matched_gt.to(dev)
    out = torch.full((b, p), num_predicates, dtype=torch.long, device=dev)
    for i, rel in enumerate(gt_relations):
        if not rel.numel():
            continue
        rel = rel.to(dev).long()
        if int(rel[:, 2].min()) < 0 or int(rel[:, 2].max()) >= num_predicates:
            raise ValueError(f"gt_relations[{i}] has a predicate outside [0, {num_predicates})")
        n = _num_gt(matched_gt[i], rel)
        key = rel[:, 0] * n + rel[:, 1]
        order = torch.sort(key, stable=True).indices  # first occurrence of each (s, o) comes first
        sk = key[order]
        first = torch.ones_like(sk, dtype=torch.bool)
        first[1:] = sk[1:] != sk[:-1]
        table = torch.full((n * n,), num_predicates, dtype=torch.long, device=dev)
        table[sk[first]] = rel[order[first], 2]
        gs, go = matched_gt[i, pairs[i, :, 0]], matched_gt[i, pairs[i, :, 1]]
        ok = (gs >= 0) & (go >= 0)
        out[i] = torch.where(ok, table[(gs.clamp_min(0) * n + go.clamp_min(0))], num_predicates)
    return out


def relation_query_loss(S: torch.Tensor, psi: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`L_rqc`: per image the Frobenius norm of `(S - Psi)` over the valid entries, averaged over the images
    that have any valid entry; 0 (with a graph to `S`) when none has. Shapes: all `[B, Q, Q]`."""
    if S.shape != psi.shape or S.shape != valid.shape:
        shapes = (tuple(S.shape), tuple(psi.shape), tuple(valid.shape))
        raise ValueError(f"S, psi, valid must share a shape, got {shapes}")
    diff = (S - psi.to(S.dtype)) * valid.to(S.dtype)
    norms = torch.linalg.vector_norm(diff, dim=(1, 2))  # its gradient at 0 is 0, not NaN
    has = valid.flatten(1).any(dim=1)
    if not bool(has.any()):
        return S.sum() * 0.0
    return norms[has].mean()


def relation_loss(
    pred_logits: torch.Tensor,
    targets: torch.Tensor,
    no_relation_weight: float = 0.1,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """`L_rel`: weighted cross-entropy over `C_pred + 1` classes (last = no relation, weight
    `no_relation_weight`), weighted mean over the relation queries.

    Args:
        pred_logits: `[B, P, C_pred + 1]`.
        targets: `[B, P]` long in `[0, C_pred]`.
        valid: optional `[B, P]` bool; invalid (padding) queries are ignored.
    """
    if pred_logits.shape[:2] != targets.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must match pred_logits[:2] {tuple(pred_logits.shape[:2])}")
    c = pred_logits.shape[-1]
    weight = torch.ones(c, dtype=pred_logits.dtype, device=pred_logits.device)
    weight[-1] = no_relation_weight
    targets = targets.to(pred_logits.device)
    if valid is not None:
        targets = targets.masked_fill(~valid.to(targets.device).bool(), -100)
    if not bool((targets >= 0).any()):
        return pred_logits.sum() * 0.0
    return F.cross_entropy(pred_logits.reshape(-1, c), targets.reshape(-1), weight=weight, ignore_index=-100)
