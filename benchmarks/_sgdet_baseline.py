"""Straightforward SGDet evaluators used as speed baselines for ``spade_core.eval.evaluate``.

Both follow ``docs/EVALUATION.md`` and return the same dict keys as ``evaluate`` (R@K, mR@K, per_predicate@K,
num_images, predicate_counts):

* ``evaluate_per_pair``: for every (prediction row, GT triplet) pair, compute the subject and object mask IoUs
  with numpy, then test predicate and labels (the naive implementation).
* ``evaluate_openpsg_style``: the OpenPSG ``_compute_pred_matches_panseg`` structure: first the (row, GT)
  pairs whose labels and predicate agree (``intersect_2d``), then one numpy mask IoU per candidate pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import numpy as np


def mask_iou(mask1: np.ndarray, mask2: np.ndarray) -> float:
    """OpenPSG ``mask_iou``: NaN for two empty masks."""
    a1, a2 = np.count_nonzero(mask1), np.count_nonzero(mask2)
    inter = np.count_nonzero(np.logical_and(mask1, mask2))
    union = a1 + a2 - inter
    return inter / union if union else float("nan")


def _dedupe(rel: np.ndarray) -> np.ndarray:
    seen, out = set(), []
    for row in rel.tolist():
        if tuple(row) not in seen:
            seen.add(tuple(row))
            out.append(row)
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def _pred_to_gt_per_pair(gt, rel, pred, rows, iou_thr) -> list[list[int]]:
    out = []
    for s, o, p in rows:
        hits = []
        for g, (gs, go, gp) in enumerate(rel):
            iou_s = mask_iou(pred["masks"][s], gt["masks"][gs])
            iou_o = mask_iou(pred["masks"][o], gt["masks"][go])
            same = p == gp and pred["labels"][s] == gt["labels"][gs] and pred["labels"][o] == gt["labels"][go]
            if same and iou_s >= iou_thr and iou_o >= iou_thr:
                hits.append(g)
        out.append(hits)
    return out


def _pred_to_gt_openpsg(gt, rel, pred, rows, iou_thr) -> list[list[int]]:
    gt_trip = np.column_stack([gt["labels"][rel[:, 0]], rel[:, 2], gt["labels"][rel[:, 1]]])
    pr_trip = np.column_stack([pred["labels"][rows[:, 0]], rows[:, 2], pred["labels"][rows[:, 1]]])
    keeps = (gt_trip[:, None, :] == pr_trip[None, :, :]).all(-1)  # intersect_2d: [G, T]
    out: list[list[int]] = [[] for _ in range(rows.shape[0])]
    for g in np.nonzero(keeps.any(1))[0]:
        cand = np.nonzero(keeps[g])[0]
        sub = [mask_iou(gt["masks"][rel[g, 0]], pred["masks"][rows[t, 0]]) >= iou_thr for t in cand]
        obj = [mask_iou(gt["masks"][rel[g, 1]], pred["masks"][rows[t, 1]]) >= iou_thr for t in cand]
        for t in cand[np.logical_and(sub, obj)]:
            out[t].append(int(g))
    return out


def _evaluate(matcher, gt_images, pred_images, num_predicates, ks, iou_thr, skip_empty_predictions):
    recall = {k: [] for k in ks}
    collect = {k: [[] for _ in range(num_predicates)] for k in ks}
    for gt, pred in zip(gt_images, pred_images):
        rel = np.asarray(gt["relations"], dtype=np.int64).reshape(-1, 3)
        if rel.shape[0] == 0:
            continue
        rel = _dedupe(rel)
        rows = None if pred is None else np.asarray(pred["triplets"])[:, :3].astype(np.int64)
        if rows is None or rows.shape[0] == 0:
            if skip_empty_predictions:
                continue
            pred_to_gt = [[]]
        else:
            pred_to_gt = matcher(gt, rel, pred, rows[: max(ks)], iou_thr)
        for k in ks:
            match = reduce(np.union1d, pred_to_gt[:k], np.zeros(0, dtype=np.int64)).astype(np.int64)
            recall[k].append(float(len(match)) / float(rel.shape[0]))
            hit = np.bincount(rel[match, 2], minlength=num_predicates)
            count = np.bincount(rel[:, 2], minlength=num_predicates)
            for c in np.nonzero(count)[0]:
                collect[k][c].append(float(hit[c] / count[c]))
    out = {}
    for k in ks:
        per = np.array([np.mean(v) if v else 0.0 for v in collect[k]])
        out[f"R@{k}"] = float(np.mean(recall[k])) if recall[k] else float("nan")
        out[f"mR@{k}"] = float(np.mean(per))
        out[f"per_predicate@{k}"] = per
    out["num_images"] = len(recall[ks[0]])
    out["predicate_counts"] = np.array([len(v) for v in collect[ks[0]]], dtype=np.int64)
    return out


def evaluate_per_pair(gt_images: Sequence[dict], pred_images: Sequence[dict | None], num_predicates: int,
                      ks: Sequence[int] = (20, 50, 100), iou_thr: float = 0.5,
                      skip_empty_predictions: bool = True) -> dict:
    """Naive baseline: both mask IoUs for every (prediction row, GT triplet) pair."""
    return _evaluate(_pred_to_gt_per_pair, gt_images, pred_images, num_predicates, list(ks), iou_thr,
                     skip_empty_predictions)


def evaluate_openpsg_style(gt_images: Sequence[dict], pred_images: Sequence[dict | None], num_predicates: int,
                           ks: Sequence[int] = (20, 50, 100), iou_thr: float = 0.5,
                           skip_empty_predictions: bool = True) -> dict:
    """OpenPSG-structured baseline: label/predicate filter first, then one numpy IoU per candidate pair."""
    return _evaluate(_pred_to_gt_openpsg, gt_images, pred_images, num_predicates, list(ks), iou_thr,
                     skip_empty_predictions)
