"""Hand-computed cases for the VG box SGDet evaluator, OvSGTR novel recalls and graph-constraint ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spade_core.eval.vg import (
    box_iou_plus1,
    evaluate,
    graph_constraint_triplets,
    novel_gt_mask,
    novel_recall,
    open_vocab_recall,
)

# +1-pixel convention: [0, 0, 9, 9] is 10 x 10 = 100 px
A = [0.0, 0.0, 9.0, 9.0]
B = [20.0, 0.0, 29.0, 9.0]
C = [0.0, 20.0, 9.0, 29.0]


def gt(boxes, labels, relations) -> dict:
    return {
        "boxes": np.asarray(boxes, dtype=np.float64),
        "labels": np.asarray(labels),
        "relations": np.asarray(relations, dtype=np.int64).reshape(-1, 3),
    }


def pred(boxes, labels, triplets, scores=None) -> dict:
    t = np.asarray(triplets, dtype=np.float64).reshape(-1, 3)
    if scores is None:
        scores = np.linspace(1.0, 0.5, len(t)) if len(t) else np.zeros(0)
    return {
        "boxes": np.asarray(boxes, dtype=np.float64),
        "labels": np.asarray(labels),
        "triplets": np.column_stack([t, scores]),
    }


GT1 = gt([A, B], [1, 2], [[0, 1, 3]])


def ev(gts, preds, **kw):
    kw.setdefault("num_predicates", 5)
    return evaluate(gts, preds, **kw)


def test_box_iou_plus1_values():
    iou = box_iou_plus1(np.array([A]), np.array([[0, 0, 9, 4], [10, 0, 19, 9], [9, 9, 18, 18], A]))
    # 50/100; disjoint; corner pixel shared: 1/(100+100-1); identical
    np.testing.assert_allclose(iou[0], [0.5, 0.0, 1 / 199, 1.0])


def test_exact_match_recalled_at_every_k():
    out = ev([GT1], [pred([A, B], [1, 2], [[0, 1, 3]])])
    assert out["R@20"] == out["R@50"] == out["R@100"] == 1.0
    assert out["num_images"] == 1 and out["num_empty_predictions"] == 0 and out["num_gt_triplets"] == 1


@pytest.mark.parametrize("side", [0, 1])
def test_plus1_iou_exactly_at_threshold_is_a_match(side):
    # subject (or object) box [x1, 0, x1+9, 4]: +1 IoU = 10*5 / (10*10) = 0.5 exactly -> match (inclusive);
    # without the +1 convention it would be 9*4 / (9*9) = 0.444 -> no match
    boxes = [A, B]
    x1 = boxes[side][0]
    boxes[side] = [x1, 0.0, x1 + 9, 4.0]
    p = pred(boxes, [1, 2], [[0, 1, 3]])
    assert box_iou_plus1([boxes[side]], [[A, B][side]])[0, 0] == 0.5
    assert ev([GT1], [p])["R@20"] == 1.0
    assert ev([GT1], [p], iou_thr=0.5 + 1e-9)["R@20"] == 0.0  # just above the IoU: no match


@pytest.mark.parametrize("side", [0, 1])
def test_plus1_iou_just_below_threshold_is_no_match(side):
    boxes = [A, B]
    x1 = boxes[side][0]
    boxes[side] = [x1, 0.0, x1 + 9, 3.9]  # +1 IoU = 10 * 4.9 / 100 = 0.49
    p = pred(boxes, [1, 2], [[0, 1, 3]])
    np.testing.assert_allclose(box_iou_plus1([boxes[side]], [[A, B][side]])[0, 0], 0.49)
    assert ev([GT1], [p])["R@20"] == 0.0
    assert ev([GT1], [p], iou_thr=0.49)["R@20"] == 1.0


def test_labels_and_predicate_must_be_equal():
    assert ev([GT1], [pred([A, B], [1, 2], [[0, 1, 2]])])["R@20"] == 0.0  # predicate
    assert ev([GT1], [pred([A, B], [0, 2], [[0, 1, 3]])])["R@20"] == 0.0  # subject label
    assert ev([GT1], [pred([A, B], [1, 1], [[0, 1, 3]])])["R@20"] == 0.0  # object label
    assert ev([GT1], [pred([A, B], [1, 2], [[1, 0, 3]])])["R@20"] == 0.0  # reversed pair


def test_duplicate_gt_triplets_are_not_deduplicated():
    g = gt([A, B], [1, 2], [[0, 1, 3], [0, 1, 3], [1, 0, 4]])
    out = ev([g], [pred([A, B], [1, 2], [[0, 1, 3]])])
    assert out["R@20"] == pytest.approx(2 / 3)  # both copies hit by one row; de-duplicated would be 1/2
    assert out["num_gt_triplets"] == 3


def test_several_predicates_on_one_pair():
    g = gt([A, B], [1, 2], [[0, 1, 3], [0, 1, 2]])
    assert ev([g], [pred([A, B], [1, 2], [[0, 1, 3], [0, 1, 2]])])["R@20"] == 1.0
    assert ev([g], [pred([A, B], [1, 2], [[0, 1, 2]])])["R@20"] == 0.5
    # graph constraint on the prediction side: one row per pair recalls at most one of them
    out = ev([g], [pred([A, B], [1, 2], [[0, 1, 3]])], num_predicates=5)
    assert out["per_predicate@20"][3] == 1.0 and out["per_predicate@20"][2] == 0.0
    assert out["mR@20"] == pytest.approx(1 / 5)


def test_k_cut_and_rows_used_in_given_order():
    p = pred([A, B], [1, 2], [[0, 1, 4], [0, 1, 3]], scores=np.array([0.1, 0.9]))  # scores ignored
    out = ev([GT1], [p], ks=(1, 2))
    assert out["R@1"] == 0.0 and out["R@2"] == 1.0


def test_many_to_many_one_row_hits_two_gt_triplets():
    # two GT subjects of the same label, both IoU >= 0.5 with one predicted box
    s1, s2 = [0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 7.0]  # IoU(s1, s2) = 80 / 100
    g = gt([s1, s2, B], [1, 1, 2], [[0, 2, 3], [1, 2, 3]])
    assert ev([g], [pred([s1, B], [1, 2], [[0, 1, 3]])])["R@20"] == 1.0


def test_many_to_many_one_gt_hit_by_several_rows_counted_once():
    out = ev([GT1], [pred([A, B, A], [1, 2, 1], [[0, 1, 3], [2, 1, 3]])])
    assert out["R@20"] == 1.0


def test_none_and_empty_predictions_count_as_zero():
    perfect = pred([A, B], [1, 2], [[0, 1, 3]])
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=np.int64), "triplets": np.zeros((0, 4))}
    for missing in (None, empty):
        out = ev([GT1, GT1], [perfect, missing])
        assert out["R@20"] == 0.5 and out["num_images"] == 2 and out["num_empty_predictions"] == 1
        assert out["per_predicate@20"][3] == 0.5


def test_images_without_gt_relations_are_not_counted():
    no_rel = gt([A, B], [1, 2], np.zeros((0, 3)))
    out = ev([GT1, no_rel], [pred([A, B], [1, 2], [[0, 1, 3]]), None])
    assert out["R@20"] == 1.0 and out["num_images"] == 1 and out["num_empty_predictions"] == 0


def test_recall_per_image_then_averaged():
    g2 = gt([A, B, C], [1, 2, 3], [[0, 1, 3], [0, 2, 1], [1, 2, 1], [2, 0, 0]])
    out = ev([GT1, g2], [pred([A, B], [1, 2], [[0, 1, 3]]), pred([A, B, C], [1, 2, 3], [[0, 1, 3]])])
    assert out["R@20"] == pytest.approx((1.0 + 0.25) / 2)  # pooled would be 2/5


def test_mean_recall_over_all_predicates_absent_ones_zero():
    g2 = gt([A, B, C], [1, 2, 3], [[0, 1, 3], [0, 2, 3], [1, 2, 1]])
    out = ev(
        [GT1, g2],
        [pred([A, B], [1, 2], [[0, 1, 3]]), pred([A, B, C], [1, 2, 3], [[0, 1, 3], [1, 2, 1]])],
        num_predicates=5,
    )
    # R_3 = mean(1/1, 1/2) = 0.75 (per image, then over images); R_1 = 1; predicates 0, 2, 4 absent -> 0
    np.testing.assert_allclose(out["per_predicate@20"], [0.0, 1.0, 0.0, 0.75, 0.0])
    assert out["mR@20"] == pytest.approx(1.75 / 5)
    np.testing.assert_array_equal(out["predicate_counts"], [0, 1, 0, 2, 0])


def test_no_gt_relation_anywhere():
    out = ev([gt([A], [1], np.zeros((0, 3)))], [None])
    assert np.isnan(out["R@20"]) and out["mR@20"] == 0.0 and out["num_images"] == 0


def test_torch_inputs_accepted():
    g = {k: torch.as_tensor(v) for k, v in GT1.items()}
    p = {k: torch.as_tensor(v) for k, v in pred([A, B], [1, 2], [[0, 1, 3]]).items()}
    assert ev([g], [p])["R@100"] == 1.0


@pytest.mark.parametrize(
    ("gts", "preds", "match"),
    [
        ([GT1], [], "pred_images has 0"),
        ([gt([A, B], [1, 2], [[0, 2, 3]])], [None], "gt relation box index 2 out of range"),
        ([gt([A, B], [1, 2], [[0, 1, 7]])], [None], "gt predicate 7 out of range"),
        ([{"boxes": np.zeros((2, 3)), "labels": [1, 2], "relations": [[0, 1, 3]]}], [None], "boxes must be"),
        ([gt([A, B], [1], [[0, 1, 3]])], [None], "2 boxes but 1 labels"),
        ([GT1], [pred([A, B], [1, 2], [[0, 5, 3]])], "pred triplet box index 5"),
        ([GT1], [pred([A, B], [1, 2], [[0, 1, 9]])], "pred predicate 9"),
        ([GT1], [{"boxes": [A], "labels": [1]}], "key 'triplets'"),
    ],
)  # fmt: skip
def test_invalid_inputs_raise(gts, preds, match):
    with pytest.raises(ValueError, match=match):
        ev(gts, preds)


def test_invalid_ks_and_threshold():
    with pytest.raises(ValueError, match="ks"):
        ev([GT1], [None], ks=(20, 20))
    with pytest.raises(ValueError, match="iou_thr"):
        ev([GT1], [None], iou_thr=1.5)


# --- open vocabulary ---------------------------------------------------------------------------------------


def test_novel_gt_mask_relation_and_object():
    rel = [[0, 1, 2], [0, 2, 3], [1, 0, 3]]
    labels = [5, 6, 7]
    np.testing.assert_array_equal(novel_gt_mask(rel, labels, "relation", [3]), [False, True, True])
    # object: subject AND object both novel (5, 6 novel; 7 base)
    np.testing.assert_array_equal(novel_gt_mask(rel, labels, "object", [5, 6]), [True, False, True])
    with pytest.raises(ValueError, match="kind"):
        novel_gt_mask(rel, labels, "both", [3])


def test_novel_relation_recall_uses_whole_ranked_list():
    g = gt([A, B], [1, 2], [[0, 1, 3], [0, 1, 2]])  # predicate 2 novel
    # the base row ranks first and uses up K = 1: the novel GT is only hit at K = 2
    p = pred([A, B], [1, 2], [[0, 1, 3], [0, 1, 2]])
    out = novel_recall([g], [p], "relation", [2], ks=(1, 2))
    assert out["R@1"] == 0.0 and out["R@2"] == 1.0 and out["num_images"] == 1 and out["num_gt_triplets"] == 1
    # base-only hits give novel recall 0 while the joint recall is 1/2
    p_base = pred([A, B], [1, 2], [[0, 1, 3]])
    assert novel_recall([g], [p_base], "relation", [2])["R@20"] == 0.0
    assert ev([g], [p_base])["R@20"] == 0.5


def test_novel_recall_averages_over_images_with_novel_gt_only():
    g_novel = gt([A, B], [1, 2], [[0, 1, 2], [0, 1, 2], [1, 0, 2], [0, 1, 4]])  # 3 novel GT (duplicates kept)
    g_base = gt([A, B], [1, 2], [[0, 1, 3]])
    p = pred([A, B], [1, 2], [[0, 1, 2]])
    out = novel_recall([g_novel, g_base, g_novel], [p, None, None], "relation", [2])
    assert out["num_images"] == 2 and out["R@20"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_novel_object_recall_requires_both_classes_novel():
    g = gt([A, B, C], [1, 2, 3], [[0, 1, 3], [0, 2, 3], [2, 1, 0]])  # classes 1, 2 novel; only row 0 is novel
    p = pred([A, B, C], [1, 2, 3], [[0, 2, 3], [2, 1, 0]])
    assert novel_recall([g], [p], "object", [1, 2])["R@20"] == 0.0
    p2 = pred([A, B, C], [1, 2, 3], [[0, 2, 3], [0, 1, 3]])
    out = novel_recall([g], [p2], "object", [1, 2], ks=(1, 2))
    assert out["R@1"] == 0.0 and out["R@2"] == 1.0


def test_novel_recall_without_novel_gt_is_nan():
    out = novel_recall([GT1], [None], "relation", [0])
    assert np.isnan(out["R@50"]) and out["num_images"] == 0


def test_open_vocab_recall_reports_joint_novel_relation_novel_object():
    g = gt([A, B, C], [1, 2, 3], [[0, 1, 3], [0, 2, 2], [1, 2, 4]])
    p = pred([A, B, C], [1, 2, 3], [[0, 1, 3], [0, 2, 2]])
    out = open_vocab_recall([g], [p], num_predicates=5, novel_predicates=[2, 4], novel_objects=[2, 3])
    assert set(out) == {"joint", "novel_relation", "novel_object"}
    assert out["joint"]["R@20"] == pytest.approx(2 / 3)
    assert out["novel_relation"]["R@20"] == 0.5  # (0,2,2) hit, (1,2,4) missed
    assert out["novel_object"]["R@20"] == 0.0  # only (1,2,4) has both classes novel
    assert set(open_vocab_recall([g], [p], num_predicates=5)) == {"joint"}


# --- graph constraint --------------------------------------------------------------------------------------


def test_graph_constraint_one_predicate_per_pair_ranked_by_product():
    obj = np.array([0.9, 0.5, 0.8])
    scores = np.zeros((3, 3, 3))
    scores[0, 1] = [0.1, 0.7, 0.2]  # 0.7 * 0.9 * 0.5 = 0.315
    scores[1, 2] = [0.6, 0.3, 0.1]  # 0.6 * 0.5 * 0.8 = 0.24
    scores[2, 0] = [0.2, 0.2, 0.5]  # 0.5 * 0.8 * 0.9 = 0.36
    scores[0, 0] = [1.0, 1.0, 1.0]  # self pair: never output
    out = graph_constraint_triplets(obj, scores, max_triplets=3)
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    np.testing.assert_allclose(out, [[2, 0, 2, 0.36], [0, 1, 1, 0.315], [1, 2, 0, 0.24]])
    full = graph_constraint_triplets(obj, scores, max_triplets=None)
    assert full.shape == (6, 4)  # every ordered pair of distinct boxes, one row each
    assert len({(int(s), int(o)) for s, o in full[:, :2]}) == 6


def test_graph_constraint_pairs_validity_ties_and_torch():
    obj = torch.tensor([1.0, 1.0, 1.0])
    pairs = torch.tensor([[0, 1], [1, 0], [1, 1], [2, 0]])
    scores = torch.tensor([[0.5, 0.5], [0.5, 0.2], [0.9, 0.9], [0.3, 0.8]])
    out = graph_constraint_triplets(obj, scores, pairs=pairs, pair_valid=torch.tensor([True, True, True, False]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    # ties: lowest predicate id, and equal scores keep pair order; self pair and invalid pair dropped
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.5]]))


def test_graph_constraint_output_feeds_evaluate():
    obj = np.array([0.9, 0.8])
    scores = np.zeros((2, 2, 5))
    scores[0, 1, 3] = 0.9
    scores[1, 0, 4] = 0.2
    trip = graph_constraint_triplets(obj, scores)
    assert ev([GT1], [{"boxes": [A, B], "labels": [1, 2], "triplets": trip}], ks=(1,))["R@1"] == 1.0


def test_graph_constraint_bad_shapes_and_empty():
    with pytest.raises(ValueError, match=r"\[N, N, C\]"):
        graph_constraint_triplets(np.ones(3), np.ones((2, 2, 4)))
    with pytest.raises(ValueError, match="out of range"):
        graph_constraint_triplets(np.ones(2), np.ones((1, 4)), pairs=[[0, 2]])
    assert graph_constraint_triplets(np.ones(1), np.ones((1, 1, 4))).shape == (0, 4)


# --- randomized cross-check against a literal loop implementation ------------------------------------------


def _naive_iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union


def _naive(gts, preds, num_predicates, ks, thr):
    """Scene-Graph-Benchmark SGRecall / SGMeanRecall written as plain loops."""
    rec = {k: [] for k in ks}
    per = {k: [[] for _ in range(num_predicates)] for k in ks}
    for g, p in zip(gts, preds):
        rel = g["relations"].tolist()
        if not rel:
            continue
        rows = [] if p is None else p["triplets"][:, :3].astype(int).tolist()
        for k in ks:
            hit = []
            for gs, go, gp in rel:
                ok = False
                for ps, po, pp in rows[:k]:
                    if (
                        pp == gp
                        and p["labels"][ps] == g["labels"][gs]
                        and p["labels"][po] == g["labels"][go]
                        and _naive_iou(p["boxes"][ps], g["boxes"][gs]) >= thr
                        and _naive_iou(p["boxes"][po], g["boxes"][go]) >= thr
                    ):
                        ok = True
                hit.append(ok)
            rec[k].append(sum(hit) / len(hit))
            for c in {r[2] for r in rel}:
                of_c = [h for h, r in zip(hit, rel) if r[2] == c]
                per[k][c].append(sum(of_c) / len(of_c))
    return {k: (np.mean(rec[k]), np.mean([np.mean(v) if v else 0.0 for v in per[k]])) for k in ks}


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_literal_loop_implementation(seed):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(15):
        n = int(rng.integers(2, 6))
        xy = rng.integers(0, 12, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(0, 6, (n, 2))], axis=1).astype(np.float64)
        labels = rng.integers(0, 3, n)
        r = int(rng.integers(0, 6))
        rel = np.column_stack([rng.integers(0, n, r), rng.integers(0, n, r), rng.integers(0, 4, r)])
        if r:
            rel = np.concatenate([rel, rel[:1]])  # a duplicate GT triplet
        gts.append(gt(boxes, labels, rel))
        if rng.random() < 0.15:
            preds.append(None)
            continue
        shift = rng.integers(-1, 2, (n, 2))
        pboxes = np.concatenate([boxes + np.tile(shift, 2), boxes[:1] + 3])
        plabels = np.concatenate([np.where(rng.random(n) < 0.8, labels, rng.integers(0, 3, n)), [labels[0]]])
        t = int(rng.integers(0, 30))
        trip = np.column_stack([rng.integers(0, n + 1, t), rng.integers(0, n + 1, t), rng.integers(0, 4, t)])
        if r and t:  # half the rows point at (shifted copies of) GT triplets
            use = rng.random(t) < 0.5
            trip[use] = rel[rng.integers(0, len(rel), t)][use]
        preds.append(pred(pboxes, plabels, trip))
    ks = (1, 5, 20)
    got = evaluate(gts, preds, num_predicates=5, ks=ks)
    for k, (r, mr) in _naive(gts, preds, 5, ks, 0.5).items():
        assert got[f"R@{k}"] == pytest.approx(r) and got[f"mR@{k}"] == pytest.approx(mr)
