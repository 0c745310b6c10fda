import math

import pytest
import torch
import torch.nn.functional as F

from spade_core.psg.relation_losses import (
    matched_gt_from_indices,
    pair_targets,
    relation_indicator,
    relation_loss,
    relation_query_loss,
)

# queries 0 and 2 are matched to GT instances 1 and 0; queries 1 and 3 are unmatched
MATCHED = torch.tensor([[1, -1, 0, -1]])
P = 2  # predicate id
C_PRED = 5


def test_matched_gt_from_indices():
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1])), (torch.tensor([], dtype=torch.long),) * 2]
    out = matched_gt_from_indices(indices, 4)
    assert out.tolist() == [[1, -1, 0, -1], [-1, -1, -1, -1]]


def test_relation_indicator_hand_made():
    psi, valid = relation_indicator(MATCHED, [torch.tensor([[1, 0, P]])], 4)
    assert psi.shape == valid.shape == (1, 4, 4)
    assert psi[0, 0, 2] == 1 and psi[0, 2, 0] == 0 and psi.sum() == 1
    expected_valid = torch.zeros(4, 4, dtype=torch.bool)
    expected_valid[0, 2] = expected_valid[2, 0] = True
    assert torch.equal(valid[0], expected_valid)


def test_relation_indicator_also_valid_adds_pairs_of_those_queries_as_negatives():
    """Queries 1, 2, 3 detected: their pairs become valid (i != j) with target 0 for the unmatched 1 and 3 (an
    unmatched query's GT index is clamped to 0 inside, which must not leak a 1 into psi); 0-2 stays positive."""
    rel = [torch.tensor([[1, 0, P], [0, 0, P]])]  # instance 0 -> 0 would hit every unmatched pair if it leaked
    psi, valid = relation_indicator(MATCHED, rel, 4, also_valid=torch.tensor([[False, True, True, True]]))
    plain_psi, plain_valid = relation_indicator(MATCHED, rel, 4)
    assert torch.equal(psi, plain_psi) and psi[0, 0, 2] == 1
    expected = plain_valid[0].clone()
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            expected[i, j] = i != j
    assert torch.equal(valid[0], expected) and not valid[0, 0, 1] and not valid[0, 1, 1]


def test_relation_indicator_reverse_and_symmetric():
    psi, _ = relation_indicator(MATCHED, [torch.tensor([[1, 0, P], [0, 1, 3]])], 4)
    assert psi[0, 0, 2] == 1 and psi[0, 2, 0] == 1
    psi, _ = relation_indicator(MATCHED, [torch.tensor([[1, 0, P]])], 4, symmetric=True)
    assert psi[0, 0, 2] == 1 and psi[0, 2, 0] == 1
    psi, valid = relation_indicator(MATCHED, [torch.zeros(0, 3, dtype=torch.long)], 4)
    assert psi.sum() == 0 and valid.sum() == 2
    with pytest.raises(ValueError, match="Q"):
        relation_indicator(MATCHED, [torch.tensor([[1, 0, P]])], 5)


def test_pair_targets_hand_made():
    pairs = torch.tensor([[[0, 2], [2, 0], [0, 1], [3, 2], [0, 0]]])
    t = pair_targets(pairs, MATCHED, [torch.tensor([[1, 0, P]])], C_PRED)
    assert t.tolist() == [[P, C_PRED, C_PRED, C_PRED, C_PRED]]


def test_pair_targets_first_predicate_wins_and_batches():
    rels = [torch.tensor([[1, 0, 4], [1, 0, P], [0, 1, 3]]), torch.tensor([[0, 1, 1]])]
    matched = torch.tensor([[1, -1, 0, -1], [0, 1, -1, -1]])
    pairs = torch.tensor([[[0, 2], [2, 0]], [[0, 1], [1, 0]]])
    t = pair_targets(pairs, matched, rels, C_PRED)
    assert t.tolist() == [[4, 3], [1, C_PRED]]
    with pytest.raises(ValueError, match="predicate"):
        pair_targets(pairs, matched, [torch.tensor([[0, 1, C_PRED]]), rels[1]], C_PRED)
    with pytest.raises(ValueError, match="one entry per image"):
        pair_targets(pairs, matched, rels[:1], C_PRED)


def test_relation_query_loss_hand_computation():
    S = torch.tensor(
        [
            [[1.0, 0.2, 0.9], [0.2, 1.0, 0.4], [0.9, 0.4, 1.0]],
            [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]],
        ],
        requires_grad=True,
    )
    psi = torch.zeros(3, 3, 3)
    psi[0, 0, 2] = 1.0
    valid = torch.zeros(3, 3, 3, dtype=torch.bool)
    valid[0, 0, 2] = valid[0, 2, 0] = valid[0, 0, 1] = True  # image 0: (0.9-1), (0.9-0), (0.2-0)
    valid[1, 0, 1] = True  # image 1: (0.5-0); image 2 has no valid entry and is not averaged
    expected = (math.sqrt(0.1**2 + 0.9**2 + 0.2**2) + 0.5) / 2
    loss = relation_query_loss(S, psi, valid)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert S.grad[2].abs().sum() == 0 and S.grad[0, 0, 2] != 0


def test_relation_query_loss_edge_cases():
    S = torch.zeros(1, 3, 3, requires_grad=True)
    loss = relation_query_loss(S, torch.zeros(1, 3, 3), torch.zeros(1, 3, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # graph exists even without valid entries
    S2 = torch.zeros(1, 3, 3, requires_grad=True)
    relation_query_loss(S2, torch.zeros(1, 3, 3), torch.ones(1, 3, 3, dtype=torch.bool)).backward()
    assert torch.isfinite(S2.grad).all()  # exact fit: gradient of the norm at 0 is not NaN
    with pytest.raises(ValueError, match="share a shape"):
        relation_query_loss(S, torch.zeros(1, 3, 2), torch.zeros(1, 3, 3, dtype=torch.bool))


def test_relation_loss_weighted_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, C_PRED + 1, requires_grad=True)
    targets = torch.tensor([[1, C_PRED, 0], [C_PRED, 4, C_PRED]])
    w = 0.1
    per = F.cross_entropy(logits.reshape(-1, C_PRED + 1), targets.reshape(-1), reduction="none")
    weights = torch.where(targets.reshape(-1) == C_PRED, w, 1.0)
    expected = (per * weights).sum() / weights.sum()
    torch.testing.assert_close(relation_loss(logits, targets, no_relation_weight=w), expected)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    expected_valid = (per[[0, 2, 4]]).mean()
    torch.testing.assert_close(relation_loss(logits, targets, w, valid=valid), expected_valid)
    none = relation_loss(logits, targets, w, valid=torch.zeros(2, 3, dtype=torch.bool))
    assert none.item() == 0.0
    none.backward()
    with pytest.raises(ValueError, match="targets"):
        relation_loss(logits, targets[:, :2])
