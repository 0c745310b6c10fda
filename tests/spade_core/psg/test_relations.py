import pytest
import torch

from spade_core.psg.relations import (
    RelationDecoder,
    RelationQueryBuilder,
    pair_union_masks,
    select_relation_pairs,
    suppress_duplicate_queries,
)

D = 16


def _S():
    s = torch.full((1, 3, 3), 0.1)
    s[0, 0, 1], s[0, 1, 0], s[0, 2, 0], s[0, 1, 2] = 0.9, 0.8, 0.7, 0.66
    s[0, 0, 0] = s[0, 1, 1] = s[0, 2, 2] = 1.0  # self-similarity must never be picked
    return s


def test_threshold_filtering_with_min_pairs():
    pairs, ok = select_relation_pairs(_S(), eta=0.75, max_pairs=4, min_pairs=0)
    assert ok.tolist() == [[True, True, False, False]]
    assert pairs[0, :2].tolist() == [[0, 1], [1, 0]]


def test_passing_pairs_come_first_highest_first():
    pairs, ok = select_relation_pairs(_S(), eta=0.65, max_pairs=4)
    assert pairs[0].tolist() == [[0, 1], [1, 0], [2, 0], [1, 2]]
    assert ok.all()


def test_cap_at_max_pairs():
    pairs, ok = select_relation_pairs(_S(), eta=0.0, max_pairs=2)
    assert pairs.shape == (1, 2, 2) and ok.all()
    assert pairs[0].tolist() == [[0, 1], [1, 0]]


def test_fallback_fills_with_next_best():
    pairs, ok = select_relation_pairs(_S(), eta=0.95, max_pairs=3)  # nothing passes
    assert ok.all()
    assert pairs[0].tolist() == [[0, 1], [1, 0], [2, 0]]
    pairs, ok = select_relation_pairs(_S(), eta=0.85, max_pairs=4, min_pairs=2)  # one passes, one fallback
    assert ok.tolist() == [[True, True, False, False]]
    assert pairs[0, :2].tolist() == [[0, 1], [1, 0]]


def test_no_self_pairs_and_padding_when_too_few_candidates():
    pairs, ok = select_relation_pairs(torch.ones(2, 3, 3), eta=0.0, max_pairs=10)
    assert pairs.shape == (2, 10, 2)
    assert ok.sum(1).tolist() == [6, 6]  # 3 * 2 ordered pairs exist
    sel = pairs[ok]
    assert (sel[:, 0] != sel[:, 1]).all()
    assert len({tuple(p) for p in sel[:6].tolist()}) == 6


def test_ties_broken_by_flat_index_and_deterministic():
    s = torch.zeros(1, 4, 4)
    pairs, _ = select_relation_pairs(s, eta=0.5, max_pairs=5)
    assert pairs[0].tolist() == [[0, 1], [0, 2], [0, 3], [1, 0], [1, 2]]
    torch.manual_seed(0)
    s = torch.rand(3, 5, 5).round(decimals=1)  # many ties
    a = select_relation_pairs(s, 0.5, 7)
    b = select_relation_pairs(s.clone(), 0.5, 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_invalid_queries_are_ignored():
    s = torch.ones(1, 4, 4)
    s[0, 3, :] = s[0, :, 3] = 5.0  # the invalid query has the best scores
    valid = torch.tensor([[True, True, True, False]])
    pairs, ok = select_relation_pairs(s, eta=0.0, max_pairs=8, valid=valid)
    assert ok.sum() == 6
    assert not (pairs[ok] == 3).any()


def test_select_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_pairs"):
        select_relation_pairs(torch.zeros(1, 2, 2), 0.5, 0)
    with pytest.raises(ValueError, match="S must be"):
        select_relation_pairs(torch.zeros(2, 3), 0.5, 2)
    with pytest.raises(ValueError, match="min_pairs"):
        select_relation_pairs(torch.zeros(1, 2, 2), 0.5, 2, min_pairs=3)


def test_query_builder_is_ordered_projection():
    torch.manual_seed(0)
    builder = RelationQueryBuilder(D)
    q = torch.randn(2, 5, D)
    pairs = torch.tensor([[[0, 1], [1, 0], [2, 3]], [[4, 0], [0, 4], [1, 1]]])
    out = builder(q, pairs)
    assert out.shape == (2, 3, D)
    assert not torch.allclose(out[0, 0], out[0, 1])  # (i, j) != (j, i)
    expected = builder.norm(builder.proj(torch.cat([q[1, 4], q[1, 0]])))
    torch.testing.assert_close(out[1, 0], expected)


def _pyramid(b=2):
    torch.manual_seed(1)
    return [torch.randn(b, D, s, s) for s in (8, 4, 2, 1)]


def test_relation_decoder_shapes_and_gradients():
    torch.manual_seed(0)
    dec = RelationDecoder(D, num_layers=3, num_heads=4)
    pyr = [f.requires_grad_(True) for f in _pyramid()]
    rq = torch.randn(2, 7, D, requires_grad=True)
    out = dec(rq, pyr, query_valid=torch.tensor([[True] * 5 + [False] * 2, [False] * 7]))
    assert out.shape == (2, 7, D) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert rq.grad.abs().sum() > 0
    assert all(f.grad.abs().sum() > 0 for f in pyr)
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_relation_decoder_padding_does_not_leak_into_valid_queries():
    torch.manual_seed(0)
    dec = RelationDecoder(D).eval()
    pyr = _pyramid(1)
    rq = torch.randn(1, 4, D)
    rq2 = rq.clone()
    rq2[0, 3] = 100.0
    valid = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(dec(rq, pyr, valid)[:, :3], dec(rq2, pyr, valid)[:, :3])
        assert not torch.allclose(dec(rq, pyr)[:, :3], dec(rq2, pyr)[:, :3])


def test_relation_decoder_rejects_bad_pyramid():
    dec = RelationDecoder(D, num_levels=2)
    with pytest.raises(ValueError, match="levels"):
        dec(torch.zeros(1, 2, D), _pyramid(1))
    with pytest.raises(ValueError, match="pyramid level"):
        dec(torch.zeros(1, 2, D), [torch.zeros(1, D + 1, 2, 2)])


def test_pair_union_masks():
    m = torch.zeros(1, 3, 2, 2)
    m[0, 0, 0, 0] = 1.0
    m[0, 2, 1, 1] = 0.5
    u = pair_union_masks(m, torch.tensor([[[0, 2], [1, 1]]]))
    assert u[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.5]] and u[0, 1].sum() == 0


def test_duplicates_are_suppressed_greedily_by_objectness():
    """0 and 1 are one object (IoU 0.9), 3 overlaps 0 by 0.5 only; 1 is the most object-like, so 0 goes; 3 stays
    though it overlaps 0, because 0 was dropped; an invalid query never suppresses another."""
    iou = torch.eye(5)
    for i, j, v in ((0, 1, 0.9), (0, 3, 0.5), (1, 3, 0.4), (2, 4, 0.95)):
        iou[i, j] = iou[j, i] = v
    objectness = torch.tensor([[0.5, 0.9, 0.8, 0.1, 0.2]])
    valid = torch.tensor([[True, True, False, True, True]])  # 2 is invalid: it cannot suppress 4
    keep = suppress_duplicate_queries(iou[None], objectness, valid, 0.7)
    assert keep.tolist() == [[False, True, False, True, True]]
    # threshold 1.0: nothing is a duplicate; the threshold is strict
    assert suppress_duplicate_queries(iou[None], objectness, valid, 1.0).tolist() == valid.tolist()
    assert suppress_duplicate_queries(iou[None], objectness, valid, 0.9).tolist() == valid.tolist()


def test_suppression_is_per_image_and_rejects_bad_shapes():
    iou = torch.ones(2, 3, 3)
    iou[1] = torch.eye(3)
    objectness = torch.tensor([[0.1, 0.3, 0.2], [0.1, 0.3, 0.2]])
    keep = suppress_duplicate_queries(iou, objectness, torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert keep.tolist() == [[False, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="iou must be"):
        suppress_duplicate_queries(torch.ones(2, 3, 4), objectness, torch.ones(2, 3, dtype=torch.bool), 0.5)
