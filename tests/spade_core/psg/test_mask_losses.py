import math

import pytest
import torch

from spade_core.psg.mask_losses import (
    classification_loss,
    dice_loss,
    mask_losses,
    resize_target_masks,
    sigmoid_bce_loss,
)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_hand_computed_losses():
    # one image, 2 queries, 2 classes (+ no object), 1 x 2 masks; query 1 matched to GT 0 (label 1)
    class_logits = torch.tensor([[[1.0, 0.0, 2.0], [0.5, 1.5, 0.0]]])
    mask_logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])
    targets = [{"labels": torch.tensor([1]), "masks": torch.tensor([[[0.0, 1.0]]])}]
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    out = mask_losses(class_logits, mask_logits, targets, indices, no_object_weight=0.1)

    def nll(logits, k):
        return -(logits[k] - math.log(sum(math.exp(v) for v in logits)))

    # query 0 -> no object (weight 0.1), query 1 -> class 1 (weight 1): weighted mean
    ce = (0.1 * nll([1.0, 0.0, 2.0], 2) + 1.0 * nll([0.5, 1.5, 0.0], 1)) / 1.1
    bce = (-math.log(1 - _sig(0.0)) - math.log(_sig(3.0))) / 2  # mean over the 2 pixels, 1 GT mask
    p = [_sig(0.0), _sig(3.0)]
    dice = 1 - (2 * p[1] + 1) / (p[0] + p[1] + 1 + 1)
    assert out["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss_bce"].item() == pytest.approx(bce, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    # the CE alone (shared with the box task) needs no masks
    box_targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    assert classification_loss(class_logits, box_targets, indices, 0.1).item() == pytest.approx(ce, rel=1e-5)


def test_normalised_by_number_of_gt_masks_in_the_batch():
    g = torch.Generator().manual_seed(0)
    mask_logits = torch.randn(2, 4, 3, 3, generator=g)
    class_logits = torch.randn(2, 4, 4, generator=g)
    targets = [
        {"labels": torch.tensor([0, 1, 2]), "masks": (torch.rand(3, 3, 3, generator=g) > 0.5).float()},
        {"labels": torch.tensor([2]), "masks": (torch.rand(1, 3, 3, generator=g) > 0.5).float()},
    ]
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([3]), torch.tensor([0]))]
    out = mask_losses(class_logits, mask_logits, targets, indices)
    src = torch.stack([mask_logits[0, 0], mask_logits[0, 2], mask_logits[1, 3]])
    tgt = torch.stack([targets[0]["masks"][1], targets[0]["masks"][0], targets[1]["masks"][0]])
    # 4 GT masks in the batch (one of them unmatched still counts), Mask2Former's convention
    assert out["loss_bce"].item() == pytest.approx(sigmoid_bce_loss(src, tgt, 1.0).item() / 4, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice_loss(src, tgt, 1.0).item() / 4, rel=1e-5)
    explicit = mask_losses(class_logits, mask_logits, targets, indices, num_masks=2.0)
    assert explicit["loss_dice"].item() == pytest.approx(2 * out["loss_dice"].item(), rel=1e-5)


def test_perfect_prediction_has_small_losses():
    masks = torch.zeros(1, 6, 6)
    masks[0, :3] = 1
    mask_logits = (masks * 40 - 20)[None]
    class_logits = torch.tensor([[[20.0, 0.0, 0.0]]])
    targets = [{"labels": torch.tensor([0]), "masks": masks}]
    out = mask_losses(class_logits, mask_logits, targets, [(torch.tensor([0]), torch.tensor([0]))])
    assert all(v.item() < 1e-3 for v in out.values())


def test_no_match_gives_zero_mask_losses_with_graph():
    mask_logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    class_logits = torch.randn(1, 3, 3, requires_grad=True)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4)}]
    idx = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))]
    out = mask_losses(class_logits, mask_logits, empty, idx)
    assert out["loss_bce"].item() == 0 and out["loss_dice"].item() == 0
    sum(out.values()).backward()  # all queries pushed to "no object"
    assert class_logits.grad[..., -1].lt(0).all()


def test_resize_target_masks():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :2] = True
    small = resize_target_masks(masks, (4, 4))
    assert small.dtype == torch.float32
    assert small[0, :2, 0].tolist() == [1.0, 1.0] and small[0, 0, 1].item() == 0.0
    assert resize_target_masks(masks, (16, 16)).shape == (1, 16, 16)
    assert resize_target_masks(torch.zeros(0, 8, 8), (4, 4)).shape == (0, 4, 4)
    half = torch.zeros(1, 4, 4)
    half[0, :, :1] = 1
    assert resize_target_masks(half, (2, 2))[0, 0].tolist() == [0.5, 0.0]


def test_bad_indices():
    with pytest.raises(ValueError, match="indices"):
        mask_losses(torch.randn(1, 2, 3), torch.randn(1, 2, 4, 4),
                    [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}], [])
