"""Pointing game and top-k IoU on hand-made maps and masks."""

from __future__ import annotations

import pytest
import torch

from spade_core.diffusion.localisation import (
    LocalisationQuery,
    category_masks,
    merge_scores,
    pointing_hits,
    score_queries,
    summarise,
    topk_iou,
)


def _mask(size: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_hit_and_miss():
    mask = _mask(8, 0, 4, 0, 4)
    maps = torch.zeros(2, 8, 8)
    maps[0, 1, 2] = 1.0  # inside
    maps[1, 6, 6] = 1.0  # outside
    assert pointing_hits(maps, mask).tolist() == [1.0, 0.0]


def test_pointing_upsamples_a_low_resolution_map():
    mask = _mask(16, 8, 16, 8, 16)  # bottom-right quadrant
    low = torch.tensor([[0.0, 0.1], [0.2, 1.0]])
    assert pointing_hits(low, mask).item() == 1.0
    assert pointing_hits(low.flip(0, 1), mask).item() == 0.0


def test_topk_iou_perfect_partial_and_fraction():
    mask = _mask(8, 0, 4, 0, 4)  # 16 pixels
    assert topk_iou(mask.float(), mask).item() == pytest.approx(1.0)
    shifted = _mask(8, 0, 4, 2, 6).float()  # overlaps 8 of 16 -> IoU 8 / 24
    assert topk_iou(shifted, mask).item() == pytest.approx(8 / 24)
    # fraction 1/64: only the single best pixel, which lies in the mask -> IoU 1/16
    peak = torch.zeros(8, 8)
    peak[0, 0] = 1.0
    assert topk_iou(peak, mask, fraction=1 / 64).item() == pytest.approx(1 / 16)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least one pixel"):
        pointing_hits(torch.rand(4, 4), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="fraction"):
        topk_iou(torch.rand(4, 4), _mask(4, 0, 2, 0, 2), fraction=0.0)
    with pytest.raises(ValueError, match="query tokens"):
        score_queries(torch.rand(3, 4, 4), [LocalisationQuery("colour", [5], _mask(4, 0, 2, 0, 2))])


def test_score_queries_averages_phrase_tokens_per_kind():
    left, right = _mask(8, 0, 8, 0, 4), _mask(8, 0, 8, 4, 8)
    maps = torch.zeros(4, 8, 8)
    maps[1, 2, 1] = 1.0  # token 1 peaks left
    maps[2, 3, 1] = 0.8  # token 2 peaks left too
    maps[3, 2, 6] = 1.0  # token 3 peaks right
    queries = [
        LocalisationQuery("colour", [1], left),
        LocalisationQuery("shape", [3], left),  # wrong object
        LocalisationQuery("phrase", [1, 2], left),
        LocalisationQuery("phrase", [3], right),
    ]
    scores = score_queries(maps, queries)
    assert scores["colour"]["pointing"] == [1.0]
    assert scores["shape"]["pointing"] == [0.0]
    assert scores["phrase"]["pointing"] == [1.0, 1.0]
    total: dict = {}
    merge_scores(total, scores)
    merge_scores(total, scores)
    s = summarise(total)
    assert s["phrase"]["n"] == 4 and s["shape"]["pointing"] == 0.0 and s["colour"]["pointing"] == 1.0
    assert 0.0 < s["phrase"]["iou"] < 1.0


def test_category_masks_unite_the_instances_of_each_category():
    a, b, c = _mask(8, 0, 2, 0, 2), _mask(8, 4, 6, 4, 6), _mask(8, 0, 2, 6, 8)
    out = category_masks(torch.stack([a, b, c]), [5, 7, 5])  # segments 0 and 2 share category 5
    assert torch.equal(out[0], a | c) and torch.equal(out[2], a | c) and torch.equal(out[1], b)
    with pytest.raises(ValueError, match="one category per segment"):
        category_masks(torch.stack([a, b]), [5])
