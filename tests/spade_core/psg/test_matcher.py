import itertools

import pytest
import torch
import torch.nn.functional as F

from spade_core.psg.matcher import HungarianMatcher, pairwise_bce_cost, pairwise_dice_cost


def _naive_cost(class_logits, mask_logits, labels, masks, wc=2.0, wm=5.0, wd=5.0):
    """Cost [Q,S] computed pair by pair with torch's own losses."""
    q, s = mask_logits.shape[0], labels.shape[0]
    cost = torch.zeros(q, s)
    prob = class_logits.softmax(-1)
    for i in range(q):
        for j in range(s):
            x, t = mask_logits[i].flatten(), masks[j].flatten().float()
            bce = F.binary_cross_entropy_with_logits(x, t)
            p = x.sigmoid()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            cost[i, j] = -wc * prob[i, labels[j]] + wm * bce + wd * dice
    return cost


def _brute_force_min(cost: torch.Tensor) -> float:
    q, s = cost.shape
    if q >= s:
        return min(sum(cost[p[j], j].item() for j in range(s)) for p in itertools.permutations(range(q), s))
    return min(sum(cost[i, p[i]].item() for i in range(q)) for p in itertools.permutations(range(s), q))


def test_pairwise_costs_match_naive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=g) * 3
    targets = (torch.rand(3, 30, generator=g) > 0.5).float()
    bce = pairwise_bce_cost(logits, targets)
    dice = pairwise_dice_cost(logits, targets)
    for i in range(4):
        for j in range(3):
            torch.testing.assert_close(bce[i, j], F.binary_cross_entropy_with_logits(logits[i], targets[j]))
            p = logits[i].sigmoid()
            expected = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
            torch.testing.assert_close(dice[i, j], expected)


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    batch, num_classes = 2, 4
    q = int(torch.randint(1, 6, (1,), generator=g))
    class_logits = torch.randn(batch, q, num_classes + 1, generator=g) * 2
    mask_logits = torch.randn(batch, q, 5, 6, generator=g) * 3
    targets = []
    for _ in range(batch):
        s = int(torch.randint(1, 5, (1,), generator=g))
        targets.append({
            "labels": torch.randint(0, num_classes, (s,), generator=g),
            "masks": (torch.rand(s, 5, 6, generator=g) > 0.5).float(),
        })
    indices = HungarianMatcher()(class_logits, mask_logits, targets)
    for b, (rows, cols) in enumerate(indices):
        labels, masks = targets[b]["labels"], targets[b]["masks"]
        cost = _naive_cost(class_logits[b], mask_logits[b], labels, masks)
        assert len(rows) == len(cols) == min(q, labels.numel())
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert rows.tolist() == sorted(rows.tolist())
        assert cost[rows, cols].sum().item() == pytest.approx(_brute_force_min(cost), abs=1e-4)


def test_recovers_a_permutation():
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    labels = torch.tensor([2, 0, 1])
    perm = torch.tensor([4, 0, 2])  # GT j is predicted by query perm[j]
    mask_logits = torch.full((1, 5, 8, 8), -8.0)
    class_logits = torch.zeros(1, 5, 4)
    class_logits[0, :, 3] = 5.0  # everything else says "no object"
    for j in range(3):
        mask_logits[0, perm[j]] = masks[j] * 16 - 8
        class_logits[0, perm[j], labels[j]] = 5.0
        class_logits[0, perm[j], 3] = 0.0
    rows, cols = HungarianMatcher()(class_logits, mask_logits, [{"labels": labels, "masks": masks}])[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 0, 2: 2}


def test_empty_targets_and_bad_input():
    matcher = HungarianMatcher()
    class_logits, mask_logits = torch.randn(2, 3, 4), torch.randn(2, 3, 4, 4)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4)}
    one = {"labels": torch.tensor([1]), "masks": torch.ones(1, 4, 4)}
    (r0, c0), (r1, c1) = matcher(class_logits, mask_logits, [empty, one])
    assert r0.numel() == 0 and c0.numel() == 0 and r1.numel() == 1 and c1.tolist() == [0]
    with pytest.raises(ValueError, match="targets"):
        matcher(class_logits, mask_logits, [one])
    with pytest.raises(ValueError, match="resize"):
        matcher(class_logits, mask_logits, [one, {"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8)}])
    with pytest.raises(ValueError, match="costs"):
        HungarianMatcher(0.0, 0.0, 0.0)


def test_matched_pairs_and_instance_normaliser():
    from spade_core.psg.matcher import instance_normaliser, matched_pairs

    pred = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[10.0, 10.0], [20.0, 20.0]])},
               {"labels": torch.tensor([4]), "boxes": torch.tensor([[30.0, 30.0]])}]
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([0]))]
    src, tgt = matched_pairs(pred, targets, "boxes", indices)
    assert src.tolist() == [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]
    assert tgt.tolist() == [[20.0, 20.0], [10.0, 10.0], [30.0, 30.0]]
    assert instance_normaliser(targets, None) == 3.0 and instance_normaliser(targets, 0.25) == 1.0
    assert instance_normaliser([{"labels": torch.zeros(0)}], None) == 1.0
