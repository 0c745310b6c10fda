"""Hand-made cases for every rule of docs/EVALUATION.md §2-§6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spade_core.eval import evaluate, novel_triplet_mask, restrict_gt

H, W = 4, 8


def box(*cells: tuple[int, int]) -> np.ndarray:
    """A [H, W] mask with the given (row, col) pixels set."""
    m = np.zeros((H, W), dtype=bool)
    for r, c in cells:
        m[r, c] = True
    return m


def row(r: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[r, c0:c1] = True
    return m


def gt(masks, labels, relations) -> dict:
    return {"masks": np.stack(masks), "labels": np.asarray(labels),
            "relations": np.asarray(relations, dtype=np.int64).reshape(-1, 3)}


def pred(masks, labels, triplets) -> dict:
    t = np.asarray(triplets, dtype=np.float64).reshape(-1, 3)
    scores = np.linspace(1.0, 0.5, len(t)) if len(t) else np.zeros(0)
    return {"masks": np.stack(masks), "labels": np.asarray(labels), "triplets": np.column_stack([t, scores])}


# two GT segments (subject 0 = row 0 cols 0-3, object 1 = row 2 cols 0-3), labels 1 and 2, predicate 3
A, B = row(0, 0, 4), row(2, 0, 4)
GT1 = gt([A, B], [1, 2], [[0, 1, 3]])


def ev(gts, preds, **kw):
    kw.setdefault("num_predicates", 5)
    return evaluate(gts, preds, **kw)


def test_exact_match_recalled():
    out = ev([GT1], [pred([A, B], [1, 2], [[0, 1, 3]])])
    assert out["R@20"] == out["R@50"] == out["R@100"] == 1.0
    assert out["num_images"] == 1


def test_iou_threshold_is_inclusive():
    half = row(0, 0, 2)  # IoU with A = 2/4 = 0.5 exactly
    p = pred([half, B], [1, 2], [[0, 1, 3]])
    assert ev([GT1], [p])["R@20"] == 1.0
    assert ev([GT1], [p], iou_thr=0.5 + 1e-12)["R@20"] == 0.0
    below = row(0, 0, 2) | box((1, 0))  # IoU 2/5 = 0.4
    assert ev([GT1], [pred([below, B], [1, 2], [[0, 1, 3]])])["R@20"] == 0.0
    assert ev([GT1], [pred([below, B], [1, 2], [[0, 1, 3]])], iou_thr=0.4)["R@20"] == 1.0


def test_object_iou_also_thresholded():
    p = pred([A, row(2, 0, 1)], [1, 2], [[0, 1, 3]])  # object IoU 1/4
    assert ev([GT1], [p])["R@20"] == 0.0


def test_one_row_recalls_two_gt_triplets():
    # two disjoint equal-size GT subjects with the same label; the predicted mask covers both: IoU 0.5 each
    s1, s2, o = row(0, 0, 2), row(0, 2, 4), B
    g = gt([s1, s2, o], [1, 1, 2], [[0, 2, 3], [1, 2, 3]])
    p = pred([s1 | s2, o], [1, 2], [[0, 1, 3]])
    assert ev([g], [p])["R@20"] == 1.0


def test_duplicate_gt_triplets_removed():
    g = gt([A, B], [1, 2], [[0, 1, 3], [0, 1, 3], [1, 0, 4]])
    out = ev([g], [pred([A, B], [1, 2], [[0, 1, 3]])])
    assert out["R@20"] == 0.5  # 1 of 2 unique triplets, not 2 of 3
    assert out["per_predicate@20"][3] == 1.0


def test_two_predicates_on_one_pair_are_two_triplets():
    g = gt([A, B], [1, 2], [[0, 1, 3], [0, 1, 0]])
    assert ev([g], [pred([A, B], [1, 2], [[0, 1, 3]])])["R@20"] == 0.5
    assert ev([g], [pred([A, B], [1, 2], [[0, 1, 3], [0, 1, 0]])])["R@20"] == 1.0


def _ranked(hit_row: int, n_rows: int = 60) -> dict:
    rows = [[0, 1, 1]] * n_rows  # wrong predicate
    rows[hit_row] = [0, 1, 3]
    return pred([A, B], [1, 2], rows)


def test_rank_cutoff():
    at_21 = ev([GT1], [_ranked(20)])
    assert (at_21["R@20"], at_21["R@50"], at_21["R@100"]) == (0.0, 1.0, 1.0)
    at_20 = ev([GT1], [_ranked(19)])
    assert at_20["R@20"] == 1.0
    at_51 = ev([GT1], [_ranked(50)])
    assert (at_51["R@50"], at_51["R@100"]) == (0.0, 1.0)


def test_fewer_rows_than_k_and_custom_ks():
    out = ev([GT1], [_ranked(2, n_rows=3)], ks=(1, 3))
    assert (out["R@1"], out["R@3"]) == (0.0, 1.0)
    assert "R@20" not in out


def test_rows_used_in_given_order_never_sorted():
    p = _ranked(20)
    p["triplets"][:, 3] = 0.5  # all tied: input order decides
    assert ev([GT1], [p])["R@20"] == 0.0
    p["triplets"][20, 3] = 0.9  # even out of order, the evaluator does not re-sort
    assert ev([GT1], [p])["R@20"] == 0.0


def test_triplets_without_score_column_and_integer_dtype():
    p = pred([A, B], [1, 2], [[0, 1, 3]])
    p["triplets"] = np.array([[0, 1, 3]], dtype=np.int64)
    assert ev([GT1], [p])["R@20"] == 1.0


@pytest.mark.parametrize("labels", [[0, 2], [1, 0]])
def test_wrong_subject_or_object_label(labels):
    assert ev([GT1], [pred([A, B], labels, [[0, 1, 3]])])["R@20"] == 0.0


def test_wrong_predicate():
    assert ev([GT1], [pred([A, B], [1, 2], [[0, 1, 2]])])["R@20"] == 0.0


def test_swapped_subject_object():
    g = gt([A, B], [1, 1], [[0, 1, 3]])  # same labels, so only the masks tell the roles apart
    assert ev([g], [pred([A, B], [1, 1], [[1, 0, 3]])])["R@20"] == 0.0
    assert ev([g], [pred([A, B], [1, 1], [[1, 0, 3], [0, 1, 3]])])["R@20"] == 1.0


def test_empty_masks_never_match():
    empty = np.zeros((H, W), dtype=bool)
    g = gt([empty, B], [1, 2], [[0, 1, 3]])
    both_empty = pred([empty, B], [1, 2], [[0, 1, 3]])
    assert ev([g], [both_empty], iou_thr=0.0)["R@20"] == 0.0  # 0/0 = NaN fails even a zero threshold
    assert ev([g], [pred([A, B], [1, 2], [[0, 1, 3]])], iou_thr=0.0)["R@20"] == 1.0  # IoU 0 >= 0


def test_empty_and_missing_predictions_skip_or_zero():
    gts = [GT1, GT1, GT1]
    preds = [pred([A, B], [1, 2], [[0, 1, 3]]), None, pred([A, B], [1, 2], [])]
    skip = ev(gts, preds)
    assert (skip["R@20"], skip["num_images"], skip["num_skipped"]) == (1.0, 1, 2)
    assert skip["mR@20"] == pytest.approx(1.0 / 5)
    zero = ev(gts, preds, skip_empty_predictions=False)
    assert (zero["R@20"], zero["num_images"], zero["num_skipped"]) == (pytest.approx(1 / 3), 3, 0)
    assert zero["per_predicate@20"][3] == pytest.approx(1 / 3)
    assert zero["predicate_counts"][3] == 3


def test_all_skipped_gives_nan_recall():
    out = ev([GT1], [None])
    assert out["num_images"] == 0 and np.isnan(out["R@20"]) and out["mR@20"] == 0.0


def test_recall_is_per_image_average_not_pooled():
    g2 = gt([A, B], [1, 2], [[0, 1, 3], [1, 0, 3], [0, 0, 3]])
    out = ev([GT1, g2], [pred([A, B], [1, 2], [[0, 1, 3]]), pred([A, B], [1, 2], [[0, 1, 0]])])
    assert out["R@20"] == 0.5  # (1/1 + 0/3) / 2; pooled would be 1/4
    assert out["per_predicate@20"][3] == 0.5


def test_mean_recall_counts_absent_predicates():
    g_other = gt([A, B], [1, 2], [[0, 1, 2]])
    preds = [pred([A, B], [1, 2], [[0, 1, 3]]), pred([A, B], [1, 2], [[0, 1, 1]]),
             pred([A, B], [1, 2], [[0, 1, 2]])]
    out = ev([GT1, GT1, g_other], preds, num_predicates=5)
    np.testing.assert_array_equal(out["per_predicate@20"], [0.0, 0.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(out["predicate_counts"], [0, 0, 1, 2, 0])
    assert out["mR@20"] == pytest.approx(1.5 / 5)
    assert ev([GT1, GT1, g_other], preds, num_predicates=10)["mR@20"] == pytest.approx(1.5 / 10)


def test_predicate_subset():
    g_other = gt([A, B], [1, 2], [[0, 1, 2]])
    preds = [pred([A, B], [1, 2], [[0, 1, 3]]), pred([A, B], [1, 2], [[0, 1, 1]])]
    full = ev([GT1, g_other], preds)
    assert ev([GT1, g_other], preds, predicate_subset=[3])["mR@20"] == 1.0
    sub = ev([GT1, g_other], preds, predicate_subset=[2, 3])
    assert sub["mR@20"] == 0.5 and sub["R@20"] == full["R@20"] == 0.5
    assert ev([GT1, g_other], preds, predicate_subset=[2, 3, 4])["mR@20"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="predicate_subset"):
        ev([GT1], preds[:1], predicate_subset=[7])


def test_images_without_relations_dropped():
    g_empty = gt([A, B], [1, 2], [])
    out = ev([g_empty, GT1], [None, pred([A, B], [1, 2], [[0, 1, 3]])], skip_empty_predictions=False)
    assert (out["num_images"], out["R@20"]) == (1, 1.0)


def test_torch_inputs():
    p = pred([A, B], [1, 2], [[0, 1, 3]])
    tg = {k: torch.from_numpy(np.asarray(v)) for k, v in GT1.items()}
    tp = {k: torch.from_numpy(np.asarray(v)) for k, v in p.items()}
    assert ev([tg], [tp])["R@20"] == 1.0


def test_mask_size_mismatch_raises():
    big = np.zeros((2, H + 1, W), dtype=bool)
    p = {"masks": big, "labels": np.array([1, 2]), "triplets": np.array([[0, 1, 3, 1.0]])}
    with pytest.raises(ValueError, match=r"image 1: .*\(5, 8\).*\(4, 8\)"):
        ev([GT1, GT1], [pred([A, B], [1, 2], [[0, 1, 3]]), p])


@pytest.mark.parametrize(
    ("gts", "preds", "match"),
    [
        ([gt([A, B], [1, 2], [[0, 2, 3]])], [None], "image 0: gt relation segment index 2"),
        ([gt([A, B], [1, 2], [[0, 1, 5]])], [None], "image 0: gt predicate 5"),
        ([GT1], [pred([A, B], [1, 2], [[0, 2, 3]])], "image 0: pred triplet segment index 2"),
        ([GT1], [pred([A, B], [1, 2], [[0, 1, -1]])], "image 0: pred predicate -1"),
        ([GT1], [pred([A, B], [1, 2], [[0, 1, 2.5]])], "must be integers"),
        ([GT1], [{"masks": np.stack([A, B]).astype(np.uint8), "labels": [1, 2], "triplets": [[0, 1, 3]]}],
         "bool"),
        ([GT1], [pred([A, B], [1], [[0, 1, 3]])], "2 masks but 1 labels"),
        ([GT1], [], "pred_images has 0"),
        ([GT1], [{"masks": np.stack([A, B]), "labels": [1, 2]}], "image 0: pred must be a dict with key"),
        ([{"masks": np.stack([A, B]), "relations": [[0, 1, 3]]}], [None], "image 0: gt must be a dict"),
    ],
)
def test_bad_input_raises(gts, preds, match):
    with pytest.raises(ValueError, match=match):
        ev(gts, preds)


def test_bad_arguments_raise():
    p = [pred([A, B], [1, 2], [[0, 1, 3]])]
    for kw in ({"ks": (0,)}, {"ks": (20, 20)}, {"iou_thr": 1.5}, {"num_predicates": 0}):
        with pytest.raises(ValueError):
            evaluate([GT1], p, **{"num_predicates": 5, **kw})


def test_novel_triplet_mask_ovr_and_ovdr():
    rel = np.array([[0, 1, 3], [1, 2, 0], [2, 0, 4], [0, 2, 1]])
    labels = np.array([10, 11, 12])
    np.testing.assert_array_equal(novel_triplet_mask(rel, labels, [3, 4]), [True, False, True, False])
    np.testing.assert_array_equal(novel_triplet_mask(rel, labels, [3], novel_objects=[12]),
                                  [True, True, True, True])
    np.testing.assert_array_equal(novel_triplet_mask(rel, labels, [], novel_objects=[11]),
                                  [True, True, False, False])


def test_restrict_gt_recall_over_novel_triplets():
    g = gt([A, B], [1, 2], [[0, 1, 3], [0, 1, 0], [1, 0, 0]])
    g_base_only = gt([A, B], [1, 2], [[0, 1, 0]])
    preds = [pred([A, B], [1, 2], [[0, 1, 3]]), pred([A, B], [1, 2], [[0, 1, 0]])]
    keep = [novel_triplet_mask(x["relations"], x["labels"], [3]) for x in (g, g_base_only)]
    restricted = restrict_gt([g, g_base_only], keep)
    np.testing.assert_array_equal(restricted[0]["relations"], [[0, 1, 3]])
    assert restricted[1]["relations"].shape == (0, 3)
    assert g["relations"].shape == (3, 3)  # input untouched
    out = ev(restricted, preds)
    assert (out["R@20"], out["num_images"]) == (1.0, 1)  # the image left without relations drops out
    assert ev([g, g_base_only], preds)["R@20"] == pytest.approx((1 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="image 0: keep"):
        restrict_gt([g], [np.array([True])])
    with pytest.raises(ValueError, match="keep has 1"):
        restrict_gt([g, g], [np.ones(3, bool)])
