"""The probe's bookkeeping (benchmarks/probe_features.py) on hand-built cases: the README's probe table rests on it."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _probe_module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("probe_features", BENCH / "probe_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _masks(*boxes, size=8):
    out = np.zeros((len(boxes), size, size), dtype=bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        out[k, y0:y1, x0:x1] = True
    return out


def test_queried_pairs_map_queries_to_kept_segments():
    probe = _probe_module()
    out = {"pairs": torch.tensor([[[0, 2], [2, 3], [1, 3], [3, 0]]]),
           "pair_valid": torch.tensor([[True, True, True, False]])}
    keep = torch.tensor([True, False, True, True])  # query 1 is dropped: segments are queries 0, 2, 3
    np.testing.assert_array_equal(probe.queried_pairs(out, 0, keep), [[0, 1], [1, 2]])


def test_match_stats_counts_segments_pairs_and_possible_relations():
    probe = _probe_module()
    gt = {"masks": _masks((0, 4, 0, 4), (4, 8, 4, 8), (0, 2, 6, 8)), "labels": np.array([1, 2, 3]),
          "relations": np.array([[0, 1, 5], [1, 2, 6]])}
    # segment 0 covers GT 0 (right class), segment 1 covers GT 1 (wrong class), GT 2 is missed (IoU 0.25)
    pred = {"masks": _masks((0, 4, 0, 4), (4, 8, 4, 8), (0, 1, 7, 8)), "labels": np.array([1, 9, 3]),
            "pairs": np.array([[0, 1], [2, 1]])}
    stats = probe.match_stats([gt], [pred])
    assert stats["segments found"] == 100 * 2 / 3 and stats["... with their class"] == 100 * 1 / 3
    assert stats["pairs queried / image"] == 2
    assert stats["GT relations queried"] == 50.0  # (0, 1) is queried; (1, 2) is not: GT 2 has no segment
    reversed_pairs = {**pred, "pairs": np.array([[1, 0]])}  # pairs are ordered: (1, 0) does not cover (0, 1)
    assert probe.match_stats([gt], [reversed_pairs])["GT relations queried"] == 0.0


def test_match_stats_on_boxes_uses_the_vg_iou():
    probe = _probe_module()
    gt = {"boxes": np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float), "labels": np.array([1, 2]),
          "relations": np.array([[0, 1, 0]])}
    near = {"boxes": np.array([[0, 0, 9, 8], [20, 20, 29, 29]], float), "labels": np.array([1, 3]),
            "pairs": np.array([[0, 1]])}
    stats = probe.match_stats([gt], [near])
    assert stats["segments found"] == 100.0 and stats["... with their class"] == 50.0
    assert stats["GT relations queried"] == 100.0
    off = {**near, "boxes": np.array([[5, 5, 14, 14], [20, 20, 29, 29]], float)}  # +1-px IoU 25/175
    assert probe.match_stats([gt], [off])["segments found"] == 50.0
