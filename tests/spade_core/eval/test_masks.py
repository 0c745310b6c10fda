"""Bit-packed mask IoU against the plain numpy definition."""

from __future__ import annotations

import numpy as np
import pytest

from spade_core.eval import mask_iou_matrix, pack_masks, packed_pair_iou


def _plain_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a) + np.count_nonzero(b) - inter
    return inter / union if union else float("nan")


@pytest.mark.parametrize("shape", [(5, 7), (8, 8), (13, 31), (3, 200)])  # sizes not multiples of 64 too
def test_iou_matrix_equals_plain_numpy(shape):
    rng = np.random.default_rng(0)
    a = rng.random((6, *shape)) < rng.random((6, 1, 1))
    b = rng.random((4, *shape)) < 0.3
    a[0] = False
    b[1] = False
    b[2] = a[3]
    got = mask_iou_matrix(a, b)
    want = np.array([[_plain_iou(x, y) for y in b] for x in a])
    np.testing.assert_array_equal(got, want)  # bit-identical, NaN where both empty
    assert np.isnan(got[0, 1]) and got[3, 2] == 1.0


def test_pack_masks_areas_and_padding():
    m = np.zeros((2, 3, 30), dtype=bool)
    m[0] = True
    packed, areas = pack_masks(m)
    assert packed.dtype == np.uint64 and packed.shape == (2, 2)
    np.testing.assert_array_equal(areas, [90, 0])


def test_packed_pair_iou_pairs():
    m = np.zeros((3, 2, 4), dtype=bool)
    m[0, 0, :2] = True
    m[1, 0, :] = True
    pa, aa = pack_masks(m)
    got = packed_pair_iou(pa, aa, pa, aa, np.array([0, 1, 2]), np.array([1, 1, 2]))
    np.testing.assert_array_equal(got[:2], [0.5, 1.0])
    assert np.isnan(got[2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="boolean"):
        pack_masks(np.zeros((1, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="mask sizes differ"):
        mask_iou_matrix(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 3), bool))
