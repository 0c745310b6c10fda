"""Cross-check ``evaluate`` against an independent re-implementation with the OpenPSG code structure."""

from __future__ import annotations

import importlib.util
from functools import reduce
from pathlib import Path

import numpy as np
import pytest

from spade_core.eval import evaluate

KS = (20, 50, 100)
C = 8  # predicates 6 and 7 never occur: they still count in mR's denominator


# ---- reference: OpenPSG sgg_eval.py / sgg_metrics.py (pan_seg, graph constraint), written out plainly ----
def _ref_mask_iou(mask1, mask2):
    a1, a2 = np.count_nonzero(mask1), np.count_nonzero(mask2)
    inter = np.count_nonzero(np.logical_and(mask1, mask2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float64(inter) / np.float64(a1 + a2 - inter)


def _ref_triplet(relations, classes, masks):
    s, o, p = relations[:, 0], relations[:, 1], relations[:, 2]
    return np.column_stack((classes[s], p, classes[o])), np.stack((masks[s], masks[o]), axis=1)


def _ref_pred_matches(gt_triplets, pred_triplets, gt_masks, pred_masks, thr):
    keeps = (gt_triplets[..., None] == pred_triplets.T[None, ...]).all(1)  # intersect_2d
    gt_has_match = keeps.any(1)
    pred_to_gt = [[] for _ in range(pred_masks.shape[0])]
    for gt_ind, gt_mask, keep_inds in zip(np.where(gt_has_match)[0], gt_masks[gt_has_match],
                                          keeps[gt_has_match]):
        pm = pred_masks[keep_inds]
        sub_inds = [_ref_mask_iou(gt_mask[0], m) >= thr for m in pm[:, 0]]
        ob_inds = [_ref_mask_iou(gt_mask[1], m) >= thr for m in pm[:, 1]]
        inds = np.logical_and(sub_inds, ob_inds)
        for i in np.where(keep_inds)[0][inds]:
            pred_to_gt[i].append(int(gt_ind))
    return pred_to_gt


def reference_evaluate(gts, preds, num_rel, thr, skip):
    recall = {k: [] for k in KS}
    collect = {k: [[] for _ in range(num_rel)] for k in KS}
    for gt, pred in zip(gts, preds):
        rels = np.asarray(gt["relations"]).reshape(-1, 3)
        if len(rels) == 0:
            continue
        uniq = []
        for r in rels.tolist():  # test-time de-duplication, first occurrence kept
            if r not in uniq:
                uniq.append(r)
        gt_rels = np.array(uniq)
        if pred is None or len(pred["triplets"]) == 0:
            if skip:
                continue
            pred_to_gt = [[]]
        else:
            gt_triplets, gt_tmasks = _ref_triplet(gt_rels, gt["labels"], gt["masks"])
            pred_rels = pred["triplets"][:, :3].astype(np.int64)  # rows in the given order, never sorted
            pred_triplets, pred_tmasks = _ref_triplet(pred_rels, pred["labels"], pred["masks"])
            pred_to_gt = _ref_pred_matches(gt_triplets, pred_triplets, gt_tmasks, pred_tmasks, thr)
        for k in KS:
            match = reduce(np.union1d, pred_to_gt[:k])
            recall[k].append(float(len(match)) / float(gt_rels.shape[0]))
            hit, count = [0] * num_rel, [0] * num_rel
            for idx in range(gt_rels.shape[0]):
                count[int(gt_rels[idx, 2])] += 1
            for idx in range(len(match)):
                hit[int(gt_rels[int(match[idx]), 2])] += 1
            for n in range(num_rel):
                if count[n] > 0:
                    collect[k][n].append(float(hit[n] / count[n]))
    out = {}
    for k in KS:
        per = [np.mean(v) if v else 0.0 for v in collect[k]]
        out[f"R@{k}"] = float(np.mean(recall[k]))
        out[f"mR@{k}"] = sum(per) / float(num_rel)
        out[f"per_predicate@{k}"] = np.array(per)
    out["num_images"] = len(recall[KS[0]])
    out["predicate_counts"] = np.array([len(v) for v in collect[KS[0]]])
    return out


def _assert_same(got, want):
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("skip", [True, False])
def test_matches_openpsg_structured_reference(make_synthetic, thr, skip):
    gts, preds = make_synthetic(seed=2, n_images=20)
    got = evaluate(gts, preds, C, ks=KS, iou_thr=thr, skip_empty_predictions=skip)
    want = reference_evaluate(gts, preds, C, thr, skip)
    _assert_same(got, want)
    assert 0.0 < got["R@20"] < got["R@100"] < 1.0  # the data exercise partial recall and truncation at K
    assert got["predicate_counts"][6:].sum() == 0


def test_synthetic_data_hits_every_edge_case(make_synthetic):
    gts, preds = make_synthetic(seed=2, n_images=20)
    # some matches sit exactly at IoU 0.5 (inclusive threshold)
    assert evaluate(gts, preds, C)["R@20"] > evaluate(gts, preds, C, iou_thr=0.5 + 1e-12)["R@20"]
    assert any(p is None for p in preds)
    assert any(p is not None and len(p["triplets"]) == 0 for p in preds)
    assert any(len(g["relations"]) == 0 for g in gts)
    rels = [g["relations"] for g in gts if len(g["relations"])]
    assert any(len(np.unique(r, axis=0)) < len(r) for r in rels)
    assert any(p is not None and len(p["triplets"]) > 50 for p in preds)


@pytest.mark.parametrize("seed", [1, 7])
def test_matches_reference_more_seeds(make_synthetic, seed):
    gts, preds = make_synthetic(seed=seed, n_images=20)
    _assert_same(evaluate(gts, preds, C, ks=KS), reference_evaluate(gts, preds, C, 0.5, True))


def test_benchmark_baselines_agree(make_synthetic):
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_sgdet_baseline.py"
    spec = importlib.util.spec_from_file_location("_sgdet_baseline", path)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    gts, preds = make_synthetic(seed=3, n_images=8)
    want = evaluate(gts, preds, C, ks=KS, skip_empty_predictions=False)
    for fn in (baseline.evaluate_per_pair, baseline.evaluate_openpsg_style):
        got = fn(gts, preds, C, ks=KS, skip_empty_predictions=False)
        for key in ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "num_images"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), (fn.__name__, key)
