"""Scene graph detection (SGDet) Recall@K and mean Recall@K on panoptic masks, as in the PSG benchmark.

Implements ``docs/EVALUATION.md`` §2-§6 exactly (OpenPSG ``sgg_eval.py`` in ``pan_seg`` mode):

* GT images with no relation are dropped; duplicate GT ``(s, o, p)`` rows are removed (first kept); several
  predicates on one pair are separate GT triplets.
* Prediction rows are used in the order given (the evaluator never sorts); rows after ``K`` are ignored at K.
* A row ``(ps, po, pp)`` matches a GT triplet ``(gs, go, gp)`` iff ``pp == gp``, the subject and object labels
  are equal, and both mask IoUs are ``>= iou_thr`` (inclusive; two empty masks give NaN: no match).
  Matching is many-to-many: a GT triplet is hit at K if any of the first K rows matches it.
* ``R@K`` is the mean over images of the per-image recall; ``mR@K`` the mean over predicates of ``R_c^K``,
  the mean per-image recall of predicate ``c`` over images where ``c`` occurs (0 where it occurs nowhere).

Mask IoUs are computed only for (predicted segment, GT segment) pairs that some candidate (row, GT triplet)
pair needs, on bit-packed masks (see :mod:`spade_core.eval.masks`); matching is array indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .masks import pack_masks, packed_pair_iou

__all__ = ["evaluate", "match_image", "novel_triplet_mask", "restrict_gt"]


def _as_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _get(entry: Any, key: str, name: str, image: int) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"image {image}: {name} must be a dict with key {key!r}")
    return entry[key]


def _index_array(x: Any, name: str, image: int | None, columns: tuple[int, ...]) -> np.ndarray:
    """``[N, 3]`` int64 (first 3 columns of ``[N, c]``, c in ``columns``) from ints or integral floats."""
    where = "" if image is None else f"image {image}: "
    arr = _as_numpy(x)
    if arr.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] not in columns:
        raise ValueError(f"{where}{name} must have shape [N, {' or '.join(map(str, columns))}], "
                         f"got {arr.shape}")
    idx = arr[:, :3]
    integral = np.issubdtype(idx.dtype, np.integer) or bool(np.all(np.isfinite(idx) & (idx == np.round(idx))))
    if not integral:
        raise ValueError(f"{where}{name} subject/object/predicate columns must be integers")
    return idx.astype(np.int64)


def _check_range(values: np.ndarray, upper: int, what: str, image: int | None = None) -> None:
    bad = (values < 0) | (values >= upper)
    if np.any(bad):
        where = "" if image is None else f"image {image}: "
        raise ValueError(f"{where}{what} {int(values[bad][0])} out of range [0, {upper})")


def _masks_and_labels(entry: dict, name: str, image: int) -> tuple[np.ndarray, np.ndarray]:
    masks = _as_numpy(_get(entry, "masks", name, image))
    labels = _as_numpy(_get(entry, "labels", name, image)).reshape(-1)
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"image {image}: {name} masks must be a bool array [N, H, W], "
                         f"got {masks.dtype} {masks.shape}")
    if labels.shape[0] != masks.shape[0]:
        raise ValueError(f"image {image}: {name} has {masks.shape[0]} masks but {labels.shape[0]} labels")
    return masks, labels.astype(np.int64)


def _dedupe(relations: np.ndarray) -> np.ndarray:
    """Drop exact duplicate rows, keeping first occurrences in their original order."""
    _, first = np.unique(relations, axis=0, return_index=True)
    return relations[np.sort(first)]


def match_image(
    gt_masks: np.ndarray,
    gt_labels: np.ndarray,
    gt_triplets: np.ndarray,
    pred_masks: np.ndarray,
    pred_labels: np.ndarray,
    pred_triplets: np.ndarray,
    iou_thr: float,
) -> np.ndarray:
    """Rank of the first matching prediction row of each GT triplet of one image (validated inputs).

    Args:
        gt_masks: bool ``[S, H, W]``; gt_labels: int ``[S]``; gt_triplets: int ``[G, 3]`` (s, o, p).
        pred_masks: bool ``[P, H, W]``; pred_labels: int ``[P]``; pred_triplets: int ``[T, 3]`` (s, o, p),
            ranked (row 0 is rank 1).
        iou_thr: inclusive mask IoU threshold.

    Returns:
        int64 ``[G]``: 0-based index of the first row matching each GT triplet, -1 where none does.
        GT triplet ``g`` is hit at K iff ``0 <= first[g] < K``.
    """
    gs, go, gp = gt_triplets.T
    ps, po, pp = pred_triplets.T
    candidate = (
        (pp[:, None] == gp[None, :])
        & (pred_labels[ps][:, None] == gt_labels[gs][None, :])
        & (pred_labels[po][:, None] == gt_labels[go][None, :])
    )  # [T, G]
    first = np.full(gt_triplets.shape[0], -1, dtype=np.int64)
    rows, cols = np.nonzero(candidate)
    if rows.size == 0:
        return first
    # unique (pred segment, GT segment) pairs whose IoU some candidate needs
    pair_p = np.concatenate([ps[rows], po[rows]])
    pair_g = np.concatenate([gs[cols], go[cols]])
    n_gt = gt_masks.shape[0]
    keys, inverse = np.unique(pair_p * n_gt + pair_g, return_inverse=True)
    key_p, key_g = keys // n_gt, keys % n_gt
    used_p, loc_p = np.unique(key_p, return_inverse=True)
    used_g, loc_g = np.unique(key_g, return_inverse=True)
    packed_p, area_p = pack_masks(pred_masks[used_p])
    packed_g, area_g = pack_masks(gt_masks[used_g])
    iou = packed_pair_iou(packed_p, area_p, packed_g, area_g, loc_p, loc_g)[inverse.reshape(-1)]
    with np.errstate(invalid="ignore"):
        ok = iou >= iou_thr  # NaN (both masks empty) -> False
    n = rows.size
    matched = ok[:n] & ok[n:]
    match = np.zeros_like(candidate)
    match[rows[matched], cols[matched]] = True
    hit_any = match.any(axis=0)
    first[hit_any] = match.argmax(axis=0)[hit_any]
    return first


class RecallAccumulator:
    """Per-image triplet recall and per-predicate recall ``R_c^K``, accumulated image by image.

    ``add(first, relations)``: ``first`` int ``[G]``, the rank of the first prediction matching each GT relation
    (-1: none), ``relations`` int ``[G, 3]``. ``summary(subset)``: ``R@K`` (mean over images), ``mR@K`` (mean of
    ``R_c^K`` over ``subset``, 0 for a predicate never seen), ``per_predicate@K``, ``num_images``,
    ``predicate_counts``. With no image, R@K is NaN and mR@K 0.
    """

    def __init__(self, ks: Sequence[int], num_predicates: int):
        self.ks, self.num_predicates = list(ks), num_predicates
        self.image_recall: list[np.ndarray] = []  # per evaluated image: [len(ks)]
        self.collect: list[list[list[float]]] = [[[] for _ in range(num_predicates)] for _ in self.ks]

    def add(self, first: np.ndarray, relations: np.ndarray) -> None:
        hits = (first[None, :] >= 0) & (first[None, :] < np.asarray(self.ks)[:, None])  # [len(ks), G]
        self.image_recall.append(hits.sum(axis=1) / relations.shape[0])
        count = np.bincount(relations[:, 2], minlength=self.num_predicates)
        for c in np.nonzero(count)[0]:
            of_c = relations[:, 2] == c
            for j in range(len(self.ks)):
                self.collect[j][c].append(float(hits[j, of_c].sum() / count[c]))

    def summary(self, subset: np.ndarray | None = None) -> dict[str, Any]:
        subset = np.arange(self.num_predicates) if subset is None else subset
        out: dict[str, Any] = {}
        recalls = np.asarray(self.image_recall, dtype=np.float64).reshape(-1, len(self.ks))
        for j, k in enumerate(self.ks):
            per_pred = np.array([np.mean(v) if v else 0.0 for v in self.collect[j]], dtype=np.float64)
            out[f"R@{k}"] = float(np.mean(recalls[:, j])) if recalls.shape[0] else float("nan")
            out[f"mR@{k}"] = float(np.mean(per_pred[subset]))
            out[f"per_predicate@{k}"] = per_pred
        out["num_images"] = recalls.shape[0]
        out["predicate_counts"] = np.array([len(v) for v in self.collect[0]], dtype=np.int64)
        return out


def evaluate(
    gt_images: Sequence[dict],
    pred_images: Sequence[dict | None],
    num_predicates: int,
    ks: Sequence[int] = (20, 50, 100),
    iou_thr: float = 0.5,
    skip_empty_predictions: bool = True,
    predicate_subset: Sequence[int] | None = None,
) -> dict[str, Any]:
    """SGDet R@K / mR@K over a test set (``docs/EVALUATION.md`` §5).

    Args:
        gt_images: per image a dict with ``masks`` bool ``[S, H, W]``, ``labels`` int ``[S]``,
            ``relations`` int ``[R, 3]`` (subject index, object index, predicate). numpy or torch.
        pred_images: aligned by position with ``gt_images``; ``None`` (no prediction) or a dict with
            ``masks`` bool ``[P, H, W]``, ``labels`` int ``[P]``, ``triplets`` ``[T, 4]`` (subject index,
            object index, predicate, score; ``[T, 3]`` also accepted), ranked best first. The score column is
            ignored: rows are used in the order given, never re-sorted.
        num_predicates: C, the number of predicate classes (denominator of mR).
        ks: the K values.
        iou_thr: inclusive mask IoU threshold for subject and object.
        skip_empty_predictions: images whose prediction is ``None`` or has zero rows are excluded from every
            average (OpenPSG) if True, counted as recall 0 if False.
        predicate_subset: if given, mR@K is the mean of ``R_c^K`` over these predicates only (R@K unchanged).

    Returns:
        ``R@K`` and ``mR@K`` (floats, fractions) per K, ``per_predicate@K`` (float64 ``[C]``, ``R_c^K``),
        ``num_images`` (evaluated images), ``num_skipped`` (images with GT relations skipped for an empty or
        missing prediction), ``predicate_counts`` (int64 ``[C]``: evaluated images containing each predicate).
        With no evaluated image, R@K is NaN (OpenPSG's mean of an empty list) and mR@K is 0.
    """
    ks = [int(k) for k in ks]
    if not ks or any(k <= 0 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks}")
    if num_predicates <= 0:
        raise ValueError(f"num_predicates must be positive, got {num_predicates}")
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
    if len(gt_images) != len(pred_images):
        raise ValueError(f"gt_images has {len(gt_images)} images but pred_images has {len(pred_images)}")
    subset = np.arange(num_predicates) if predicate_subset is None else np.asarray(predicate_subset, np.int64)
    if subset.ndim != 1 or subset.size == 0 or len(np.unique(subset)) != subset.size:
        raise ValueError(f"predicate_subset must be a non-empty list of distinct ids, got {predicate_subset}")
    _check_range(subset, num_predicates, "predicate_subset id")
    kmax = max(ks)
    acc = RecallAccumulator(ks, num_predicates)
    num_skipped = 0
    for i, (gt, pred) in enumerate(zip(gt_images, pred_images)):
        relations = _index_array(_get(gt, "relations", "gt", i), "gt relations", i, (3,))
        if relations.shape[0] == 0:
            continue  # images without GT relations are not part of the test set
        gt_masks, gt_labels = _masks_and_labels(gt, "gt", i)
        _check_range(relations[:, :2], gt_masks.shape[0], "gt relation segment index", i)
        _check_range(relations[:, 2], num_predicates, "gt predicate", i)
        relations = _dedupe(relations)
        num_gt = relations.shape[0]

        triplets = None
        if pred is not None:
            triplets = _index_array(_get(pred, "triplets", "pred", i), "pred triplets", i, (3, 4))
        if triplets is None or triplets.shape[0] == 0:
            if skip_empty_predictions:
                num_skipped += 1
                continue
            first = np.full(num_gt, -1, dtype=np.int64)
        else:
            pred_masks, pred_labels = _masks_and_labels(pred, "pred", i)
            if pred_masks.shape[1:] != gt_masks.shape[1:]:
                raise ValueError(f"image {i}: predicted mask size {tuple(pred_masks.shape[1:])} != "
                                 f"GT mask size {tuple(gt_masks.shape[1:])}")
            _check_range(triplets[:, :2], pred_masks.shape[0], "pred triplet segment index", i)
            _check_range(triplets[:, 2], num_predicates, "pred predicate", i)
            first = match_image(gt_masks, gt_labels, relations, pred_masks, pred_labels,
                                triplets[:kmax], iou_thr)

        acc.add(first, relations)

    out = acc.summary(subset)
    out["num_skipped"] = num_skipped
    return out


def restrict_gt(gt_images: Sequence[dict], keep: Sequence[Any]) -> list[dict]:
    """Copies of ``gt_images`` keeping only the relations selected by ``keep``.

    Args:
        gt_images: as in :func:`evaluate`.
        keep: per image a bool ``[R_i]`` over that image's (raw, not de-duplicated) relations.

    Returns:
        New dicts (masks and labels shared, ``relations`` int64 ``[R'_i, 3]``). Images left without a
        relation drop out of :func:`evaluate`. Used for the open-vocabulary recalls over novel triplets.
    """
    if len(keep) != len(gt_images):
        raise ValueError(f"keep has {len(keep)} entries but gt_images has {len(gt_images)}")
    out = []
    for i, (gt, k) in enumerate(zip(gt_images, keep)):
        relations = _index_array(_get(gt, "relations", "gt", i), "gt relations", i, (3,))
        k = _as_numpy(k)
        if k.dtype != np.bool_ or k.shape != (relations.shape[0],):
            raise ValueError(f"image {i}: keep must be bool [{relations.shape[0]}], got {k.dtype} {k.shape}")
        out.append({**gt, "relations": relations[k]})
    return out


def novel_triplet_mask(
    relations: Any,
    labels: Any,
    novel_predicates: Sequence[int],
    novel_objects: Sequence[int] = (),
) -> np.ndarray:
    """Which relations are novel in an open-vocabulary setting.

    Args:
        relations: int ``[R, 3]`` (subject index, object index, predicate).
        labels: int ``[S]`` segment classes.
        novel_predicates: predicate ids unseen in training.
        novel_objects: object class ids unseen in training; empty for OvR (novel predicate only), the novel
            object classes for OvD+R (novel predicate OR novel subject class OR novel object class).

    Returns:
        bool ``[R]``.
    """
    rel = _index_array(relations, "relations", None, (3,))
    lab = _as_numpy(labels).reshape(-1).astype(np.int64)
    _check_range(rel[:, :2], lab.shape[0], "relation segment index")
    novel = np.isin(rel[:, 2], np.asarray(novel_predicates, dtype=np.int64))
    objects = np.asarray(novel_objects, dtype=np.int64)
    if objects.size:
        novel |= np.isin(lab[rel[:, 0]], objects) | np.isin(lab[rel[:, 1]], objects)
    return novel
