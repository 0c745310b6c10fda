"""Distant / non-distant relation split (paper Table 4)."""

from __future__ import annotations

import numpy as np
import pytest

from spade_core.eval import boxes_from_masks, distant_pair_mask, spatial_split


def test_boxes_from_masks_exclusive_max_and_empty():
    m = np.zeros((3, 6, 10), dtype=bool)
    m[0, 1:3, 2:5] = True
    m[1, 5, 9] = True
    boxes = boxes_from_masks(m)
    np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [9, 5, 10, 6], [0, 0, 0, 0]])


def test_distant_pair_uses_euclidean_centre_distance():
    boxes = np.array([
        [0, 0, 10, 10],    # centre (5, 5)
        [40, 0, 50, 10],   # centre (45, 5): 40 px right of box 0
        [20, 30, 30, 40],  # centre (25, 35): dx 20, dy 30 -> 36.06 px
        [10, 0, 20, 10],   # centre (15, 5): 10 px
    ], dtype=float)
    rel = np.array([[0, 1, 0], [0, 2, 0], [2, 0, 1], [0, 3, 2]])
    # width 100: threshold 33.3 px. Pair (0, 2) is distant only by Euclidean distance (horizontal gap is 20).
    np.testing.assert_array_equal(distant_pair_mask(rel, boxes, 100), [True, True, True, False])
    np.testing.assert_array_equal(distant_pair_mask(rel, boxes, 150), [False, False, False, False])


def test_distance_exactly_at_threshold_is_not_distant():
    boxes = np.array([[0, 0, 10, 10], [30, 0, 40, 10]], dtype=float)  # centres 30 px apart
    assert not distant_pair_mask(np.array([[0, 1, 0]]), boxes, 60, frac=0.5)[0]
    assert distant_pair_mask(np.array([[0, 1, 0]]), boxes, 59.9, frac=0.5)[0]


def test_spatial_split_only_spatial_predicates():
    boxes = np.array([[0, 0, 10, 10], [80, 0, 90, 10], [5, 0, 15, 10]], dtype=float)
    rel = np.array([[0, 1, 4], [0, 2, 4], [0, 1, 7], [0, 2, 5]])
    dr, ndr = spatial_split(rel, boxes, 100, spatial_predicates=[4, 5])
    np.testing.assert_array_equal(dr, [True, False, False, False])
    np.testing.assert_array_equal(ndr, [False, True, False, True])


def test_bad_inputs():
    with pytest.raises(ValueError, match="boxes_xyxy"):
        distant_pair_mask(np.array([[0, 0, 0]]), np.zeros((1, 3)), 10)
    with pytest.raises(ValueError, match="outside"):
        distant_pair_mask(np.array([[0, 2, 0]]), np.zeros((2, 4)), 10)
    with pytest.raises(ValueError, match="bool"):
        boxes_from_masks(np.zeros((1, 2, 2), dtype=np.uint8))
