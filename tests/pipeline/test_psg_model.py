"""Helpers of the PSG model's front end that do not need a trained model."""

from __future__ import annotations

import numpy as np

from pipeline.psg_model import keep_detections


def test_keep_detections_drops_weak_and_empty_objects_and_renumbers_triplets():
    masks = np.zeros((4, 5, 5), dtype=bool)
    masks[0, :2], masks[2, 3:], masks[3, 1] = True, True, True  # object 1 has an empty mask
    pred = {"masks": masks, "labels": np.array([7, 8, 9, 6]), "scores": np.array([0.9, 0.8, 0.5, 0.001]),
            "triplets": np.array([[0, 2, 1, 0.4], [1, 0, 0, 0.3], [2, 0, 3, 0.2], [3, 2, 0, 0.1]])}
    kept = keep_detections(pred, min_score=0.01)
    np.testing.assert_array_equal(kept["labels"], [7, 9])  # 1: empty mask, 3: below the score
    np.testing.assert_array_equal(kept["triplets"], [[0, 1, 1, 0.4], [1, 0, 3, 0.2]])  # ranked order kept
    assert kept["masks"].shape == (2, 5, 5) and kept["scores"].tolist() == [0.9, 0.5]
    boxes = {"boxes": np.array([[0, 0, 4, 4], [2, 2, 2, 6]], dtype=float), "labels": np.array([1, 2]),
             "scores": np.array([0.5, 0.5]), "triplets": np.array([[0, 1, 0, 0.2], [1, 0, 0, 0.1]])}
    kept = keep_detections(boxes, min_score=0.0)
    assert len(kept["boxes"]) == 1 and kept["triplets"].shape == (0, 4)  # a zero-width box is no detection
