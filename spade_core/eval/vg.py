"""Scene graph detection (SGDet) on boxes, as in the Visual Genome VG-150 benchmark, and OvSGTR's novel recalls.

Scene-Graph-Benchmark.pytorch ``SGRecall`` / ``SGMeanRecall`` "with graph constraint" rules:

* GT images with no relation are not part of the test set. GT relations are **not** de-duplicated: two equal
  ``(s, o, p)`` rows are two GT triplets (one prediction can hit both), several predicates on one pair are
  separate GT triplets.
* Prediction rows are used in the order given (never re-sorted); rows after ``K`` are ignored at K.
* A row ``(ps, po, pp)`` matches a GT triplet ``(gs, go, gp)`` iff ``pp == gp``, the subject and object labels
  are equal, and both box IoUs are ``>= iou_thr`` (inclusive). Box IoU uses the "+1 pixel" convention of
  ``boxlist_iou`` (``TO_REMOVE = 1``: width ``x2 - x1 + 1``). Matching is many-to-many.
* An image whose prediction is ``None`` or has no row counts as recall 0 (it stays in every average).
* ``R@K``: mean over images of ``|GT triplets hit by the top K| / |GT triplets|``. ``mR@K``: per image and per
  predicate ``c`` of its GT, ``hit_c / count_c``; ``R_c`` = mean over the images where ``c`` occurs (0 where it
  occurs nowhere); ``mR@K`` = mean of ``R_c`` over all ``num_predicates`` predicates.

Open vocabulary (OvSGTR ``OvrSGZeroShotRecall`` / ``OvdSGZeroShotRecall``, :func:`novel_recall`): the GT of an
image is restricted to its novel triplets (``relation``: the predicate is novel; ``object``: the subject **and**
the object classes are both novel), the top K rows of the **whole** ranked prediction list are matched against
them, and per-image recalls are averaged over the images with at least one novel GT triplet.
:func:`open_vocab_recall` reports OvSGTR's "joint" (all GT, standard R@K), "novel relation" and "novel object".

:func:`graph_constraint_triplets` is the matching inference post-processing: one triplet per ordered pair of
distinct detections (predicate = argmax), scored predicate x subject x object, ranked best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .sgdet import RecallAccumulator, _as_numpy, _check_range, _get, _index_array

__all__ = [
    "box_iou_plus1",
    "evaluate",
    "graph_constraint_triplets",
    "match_image",
    "novel_gt_mask",
    "novel_recall",
    "open_vocab_recall",
]

NovelKind = Literal["relation", "object"]


def box_iou_plus1(a: Any, b: Any) -> np.ndarray:
    """IoU ``[N, M]`` of xyxy boxes ``a`` ``[N, 4]`` and ``b`` ``[M, 4]``, widths and heights ``x2 - x1 + 1``.

    Scene-Graph-Benchmark ``boxlist_iou`` (``TO_REMOVE = 1``): intersection sides are clamped at 0, so boxes
    that touch (``a.x2 == b.x1``) overlap by one pixel column. float64.
    """
    a = _as_numpy(a).astype(np.float64).reshape(-1, 4)
    b = _as_numpy(b).astype(np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt + 1, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def _boxes_and_labels(entry: dict, name: str, image: int) -> tuple[np.ndarray, np.ndarray]:
    boxes = _as_numpy(_get(entry, "boxes", name, image))
    labels = _as_numpy(_get(entry, "labels", name, image)).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise ValueError(
            f"image {image}: {name} boxes must be a numeric array [N, 4] (x1, y1, x2, y2), "
            f"got {boxes.dtype} {boxes.shape}"
        )
    boxes = boxes.astype(np.float64)
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"image {image}: {name} boxes must be finite")
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"image {image}: {name} has {boxes.shape[0]} boxes but {labels.shape[0]} labels")
    return boxes, labels.astype(np.int64)


def match_image(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_triplets: np.ndarray,
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
    pred_triplets: np.ndarray,
    iou_thr: float,
) -> np.ndarray:
    """Rank of the first matching prediction row of each GT triplet of one image (validated inputs).

    Args:
        gt_boxes: float ``[S, 4]`` xyxy; gt_labels: int ``[S]``; gt_triplets: int ``[G, 3]`` (s, o, p).
        pred_boxes: float ``[P, 4]``; pred_labels: int ``[P]``; pred_triplets: int ``[T, 3]``, ranked.
        iou_thr: inclusive box IoU threshold (+1-pixel IoU).

    Returns:
        int64 ``[G]``: 0-based index of the first row matching each GT triplet, -1 where none does.
    """
    first = np.full(gt_triplets.shape[0], -1, dtype=np.int64)
    if gt_triplets.shape[0] == 0 or pred_triplets.shape[0] == 0:
        return first
    gs, go, gp = gt_triplets.T
    ps, po, pp = pred_triplets.T
    iou = box_iou_plus1(pred_boxes, gt_boxes)  # [P, S]
    with np.errstate(invalid="ignore"):
        match = (
            (pp[:, None] == gp[None, :])
            & (pred_labels[ps][:, None] == gt_labels[gs][None, :])
            & (pred_labels[po][:, None] == gt_labels[go][None, :])
            & (iou[ps[:, None], gs[None, :]] >= iou_thr)
            & (iou[po[:, None], go[None, :]] >= iou_thr)
        )  # [T, G]
    hit = match.any(axis=0)
    first[hit] = match.argmax(axis=0)[hit]
    return first


def _check_args(ks: Sequence[int], iou_thr: float, gt_images: Sequence, pred_images: Sequence) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k <= 0 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks}")
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
    if len(gt_images) != len(pred_images):
        raise ValueError(f"gt_images has {len(gt_images)} images but pred_images has {len(pred_images)}")
    return ks


def _gt(entry: dict, image: int, num_predicates: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    relations = _index_array(_get(entry, "relations", "gt", image), "gt relations", image, (3,))
    boxes, labels = _boxes_and_labels(entry, "gt", image)
    _check_range(relations[:, :2], boxes.shape[0], "gt relation box index", image)
    if num_predicates is not None:
        _check_range(relations[:, 2], num_predicates, "gt predicate", image)
    return boxes, labels, relations


def _first_hits(
    gt: tuple[np.ndarray, np.ndarray, np.ndarray],
    pred: dict | None,
    image: int,
    kmax: int,
    iou_thr: float,
    num_predicates: int | None,
) -> tuple[np.ndarray, bool]:
    """``match_image`` for one image after validating its prediction; also whether the prediction was empty."""
    boxes, labels, relations = gt
    triplets = None
    if pred is not None:
        triplets = _index_array(_get(pred, "triplets", "pred", image), "pred triplets", image, (3, 4))
    if triplets is None or triplets.shape[0] == 0:
        return np.full(relations.shape[0], -1, dtype=np.int64), True
    pred_boxes, pred_labels = _boxes_and_labels(pred, "pred", image)
    _check_range(triplets[:, :2], pred_boxes.shape[0], "pred triplet box index", image)
    if num_predicates is not None:
        _check_range(triplets[:, 2], num_predicates, "pred predicate", image)
    return match_image(boxes, labels, relations, pred_boxes, pred_labels, triplets[:kmax], iou_thr), False


def evaluate(
    gt_images: Sequence[dict],
    pred_images: Sequence[dict | None],
    num_predicates: int,
    ks: Sequence[int] = (20, 50, 100),
    iou_thr: float = 0.5,
    predicate_subset: Sequence[int] | None = None,
) -> dict[str, Any]:
    """VG SGDet R@K / mR@K with graph constraint (rules in the module doc).

    Args:
        gt_images: per image a dict with ``boxes`` float ``[N, 4]`` (x1, y1, x2, y2 pixels), ``labels`` int
            ``[N]``, ``relations`` int ``[R, 3]`` (subject index, object index, predicate). numpy or torch.
        pred_images: aligned with ``gt_images``; ``None`` or a dict with ``boxes`` ``[P, 4]``, ``labels``
            ``[P]``, ``triplets`` ``[T, 3|4]`` (subject, object, predicate[, score]) ranked best first. The
            score column is ignored.
        num_predicates: C (predicate ids are ``0..C-1``; the denominator of mR).
        ks: the K values. iou_thr: inclusive +1-pixel box IoU threshold for subject and object.
        predicate_subset: if given, mR@K is the mean of ``R_c`` over these predicates only (R@K unchanged).

    Returns:
        ``R@K``, ``mR@K`` (fractions), ``per_predicate@K`` (float64 ``[C]``), ``num_images`` (images with GT
        relations), ``num_empty_predictions`` (of those, images with a ``None`` or empty prediction, counted as
        recall 0), ``predicate_counts`` (int64 ``[C]``: images containing each predicate), ``num_gt_triplets``.
        With no image holding a GT relation, R@K is NaN and mR@K 0.
    """
    ks = _check_args(ks, iou_thr, gt_images, pred_images)
    if num_predicates <= 0:
        raise ValueError(f"num_predicates must be positive, got {num_predicates}")
    acc = RecallAccumulator(ks, num_predicates)
    empty = num_gt_total = 0
    for i, (gt_entry, pred) in enumerate(zip(gt_images, pred_images)):
        gt = _gt(gt_entry, i, num_predicates)
        relations = gt[2]
        if relations.shape[0] == 0:
            continue
        first, was_empty = _first_hits(gt, pred, i, max(ks), iou_thr, num_predicates)
        empty += was_empty
        num_gt_total += relations.shape[0]
        acc.add(first, relations)
    subset = None if predicate_subset is None else np.asarray(sorted(set(predicate_subset)), dtype=np.int64)
    if subset is not None:
        _check_range(subset, num_predicates, "predicate_subset")
    out = acc.summary(subset)
    out["num_empty_predictions"] = empty
    out["num_gt_triplets"] = num_gt_total
    return out


def novel_gt_mask(relations: Any, labels: Any, kind: NovelKind, novel_ids: Sequence[int]) -> np.ndarray:
    """Which GT relations are novel (OvSGTR zero-shot recall).

    Args:
        relations: int ``[R, 3]`` (s, o, p); labels: int ``[N]`` box classes.
        kind: ``"relation"`` (OvR: the predicate is in ``novel_ids``) or ``"object"`` (OvD: the subject and
            the object classes are **both** in ``novel_ids``).
        novel_ids: novel predicate ids or novel object class ids.

    Returns:
        bool ``[R]``.
    """
    rel = _index_array(relations, "relations", None, (3,))
    lab = _as_numpy(labels).reshape(-1).astype(np.int64)
    _check_range(rel[:, :2], lab.shape[0], "relation box index")
    ids = np.asarray(list(novel_ids), dtype=np.int64)
    if kind == "relation":
        return np.isin(rel[:, 2], ids)
    if kind == "object":
        return np.isin(lab[rel[:, 0]], ids) & np.isin(lab[rel[:, 1]], ids)
    raise ValueError(f"kind must be 'relation' or 'object', got {kind!r}")


def novel_recall(
    gt_images: Sequence[dict],
    pred_images: Sequence[dict | None],
    kind: NovelKind,
    novel_ids: Sequence[int],
    ks: Sequence[int] = (20, 50, 100),
    iou_thr: float = 0.5,
    num_predicates: int | None = None,
) -> dict[str, Any]:
    """OvSGTR novel ("zero-shot") recall: R@K over the novel GT triplets only (see :func:`novel_gt_mask`).

    The top K rows of each image's **whole** ranked prediction list are matched (same rules as
    :func:`evaluate`) against its novel GT triplets; per-image recalls are averaged over images with at least
    one novel GT triplet (``None`` / empty predictions count as 0). ``num_predicates``, if given, is used to
    range-check predicate ids.

    Returns:
        ``R@K`` per K (NaN with no novel GT triplet anywhere), ``num_images``, ``num_gt_triplets``.
    """
    ks = _check_args(ks, iou_thr, gt_images, pred_images)
    kk = np.asarray(ks)[:, None]
    image_recall: list[np.ndarray] = []
    num_gt_total = 0
    for i, (gt_entry, pred) in enumerate(zip(gt_images, pred_images)):
        boxes, labels, relations = _gt(gt_entry, i, num_predicates)
        relations = relations[novel_gt_mask(relations, labels, kind, novel_ids)]
        if relations.shape[0] == 0:
            continue
        first, _ = _first_hits((boxes, labels, relations), pred, i, max(ks), iou_thr, num_predicates)
        num_gt_total += relations.shape[0]
        hits = (first[None, :] >= 0) & (first[None, :] < kk)
        image_recall.append(hits.sum(axis=1) / relations.shape[0])
    recalls = np.asarray(image_recall, dtype=np.float64).reshape(-1, len(ks))
    out: dict[str, Any] = {
        f"R@{k}": float(np.mean(recalls[:, j])) if recalls.shape[0] else float("nan") for j, k in enumerate(ks)
    }
    out["num_images"] = recalls.shape[0]
    out["num_gt_triplets"] = num_gt_total
    return out


def open_vocab_recall(
    gt_images: Sequence[dict],
    pred_images: Sequence[dict | None],
    num_predicates: int,
    novel_predicates: Sequence[int] = (),
    novel_objects: Sequence[int] = (),
    ks: Sequence[int] = (20, 50, 100),
    iou_thr: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """OvSGTR's open-vocabulary report: ``joint`` (all GT: :func:`evaluate`), ``novel_relation`` (OvR, when
    ``novel_predicates`` is non-empty) and ``novel_object`` (OvD, when ``novel_objects`` is non-empty), each a
    result dict with ``R@K`` per K."""
    out = {"joint": evaluate(gt_images, pred_images, num_predicates, ks, iou_thr)}
    if len(novel_predicates):
        out["novel_relation"] = novel_recall(
            gt_images, pred_images, "relation", novel_predicates, ks, iou_thr, num_predicates
        )
    if len(novel_objects):
        out["novel_object"] = novel_recall(gt_images, pred_images, "object", novel_objects, ks, iou_thr, num_predicates)
    return out


def graph_constraint_triplets(
    obj_scores: Any,
    pred_scores: Any,
    pairs: Any | None = None,
    pair_valid: Any | None = None,
    max_triplets: int | None = 100,
) -> Any:
    """Ranked triplets with graph constraint: one predicate per ordered pair of distinct detections.

    Args:
        obj_scores: ``[N]`` detection scores (the score of each box's predicted label).
        pred_scores: ``[M, C]`` predicate scores of the pairs ``pairs`` ``[M, 2]`` (subject, object), or
            ``[N, N, C]`` for every ordered pair when ``pairs`` is None. Pass only the C real predicate columns
            (no background / no-relation column).
        pair_valid: optional bool ``[M]`` (or ``[N, N]``); invalid pairs give no triplet. Pairs with
            subject == object never do.
        max_triplets: keep the best this many (None: all).

    Returns:
        ``[T, 4]`` rows ``(subject, object, predicate, score)`` with ``predicate = argmax_c pred_scores``
        (lowest id on ties) and ``score = max_c pred_scores * obj_scores[s] * obj_scores[o]``, sorted by score
        descending (stable: ties keep pair order). A torch tensor (float32, on the input's device) when
        ``pred_scores`` is one, else a float64 numpy array.
    """
    import torch  # here, so that the evaluator and the VG reader do not import torch

    is_torch = isinstance(pred_scores, torch.Tensor)
    scores = torch.as_tensor(pred_scores)
    device = scores.device
    scores = scores.float() if is_torch else scores.double()
    obj = torch.as_tensor(obj_scores, device=device).to(scores.dtype).reshape(-1)
    n = obj.shape[0]
    if pairs is None:
        if scores.ndim != 3 or scores.shape[:2] != (n, n):
            raise ValueError(
                f"pred_scores must be [N, N, C] with N = {n} when pairs is None, got {tuple(scores.shape)}"
            )
        grid = torch.arange(n, device=device)
        pair_t = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
        scores = scores.reshape(n * n, -1)
    else:
        pair_t = torch.as_tensor(pairs, device=device).long().reshape(-1, 2)
        if scores.ndim != 2 or scores.shape[0] != pair_t.shape[0]:
            raise ValueError(f"pred_scores must be [M, C] with M = {pair_t.shape[0]} pairs, got {tuple(scores.shape)}")
    if pair_t.numel() and (pair_t.min() < 0 or pair_t.max() >= n):
        raise ValueError(f"pair index out of range [0, {n})")
    ok = pair_t[:, 0] != pair_t[:, 1]
    if pair_valid is not None:
        ok &= torch.as_tensor(pair_valid, device=device).bool().reshape(-1)
    if scores.shape[1] == 0 or not bool(ok.any()):
        empty = torch.zeros((0, 4), dtype=scores.dtype, device=device)
        return empty if is_torch else empty.numpy()
    predicate = scores.argmax(dim=1)  # first maximal index on ties
    best = scores.gather(1, predicate[:, None])[:, 0]
    score = best * obj[pair_t[:, 0]] * obj[pair_t[:, 1]]
    idx = torch.nonzero(ok).reshape(-1)
    order = idx[torch.sort(score[idx], descending=True, stable=True).indices]
    if max_triplets is not None:
        order = order[: int(max_triplets)]
    out = torch.stack(
        [
            pair_t[order, 0].to(scores.dtype),
            pair_t[order, 1].to(scores.dtype),
            predicate[order].to(scores.dtype),
            score[order],
        ],
        dim=1,
    )
    return out if is_torch else out.numpy()
