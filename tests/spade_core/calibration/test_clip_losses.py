"""The embedded CLIP's pre-training losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spade_core.calibration.clip_losses import image_caption_loss, region_name_loss


def test_image_caption_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale = torch.tensor(10.0)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    target = torch.arange(6)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(image_caption_loss(img, txt, scale), expected, atol=1e-6)
    # matched pairs give a lower loss than shuffled ones
    assert image_caption_loss(img, img, scale) < image_caption_loss(img, img[torch.randperm(6, generator=g)], scale)
    with pytest.raises(ValueError, match="both be"):
        image_caption_loss(img, txt[:5], scale)


def test_region_name_loss_contrasts_over_the_vocabulary_and_ignores_padding():
    g = torch.Generator().manual_seed(1)
    regions, vocab = torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(3, 4, generator=g)
    labels = torch.tensor([0, 2, -1, 1, -1])
    scale = torch.tensor(5.0)
    keep = labels >= 0
    logits = scale * F.normalize(regions[keep], dim=-1) @ F.normalize(vocab, dim=-1).t()
    assert torch.allclose(region_name_loss(regions, labels, vocab, scale), F.cross_entropy(logits, labels[keep]))
    empty = region_name_loss(regions, torch.full((5,), -1), vocab, scale)
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="labels"):
        region_name_loss(regions, labels[:4], vocab, scale)
    with pytest.raises(ValueError, match="vocab_emb"):
        region_name_loss(regions, labels, vocab[:, :3], scale)


def test_region_name_loss_takes_target_distributions_and_a_log_prior():
    g = torch.Generator().manual_seed(2)
    regions, vocab = torch.randn(4, 4, generator=g, requires_grad=True), torch.randn(3, 4, generator=g)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 2]])  # row 2 ignored, row 0 two names
    scale = torch.tensor(5.0)
    logits = scale * F.normalize(regions[[0, 1, 3]], dim=-1) @ F.normalize(vocab, dim=-1).t()
    dist = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0, 0, 1]])
    expected = -(dist * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(region_name_loss(regions, targets, vocab, scale), expected, atol=1e-6)
    # one-hot targets are the hard-label loss
    hard = torch.tensor([2, 1, 0, 0])
    assert torch.allclose(region_name_loss(regions, F.one_hot(hard, 3).float(), vocab, scale),
                          region_name_loss(regions, hard, vocab, scale), atol=1e-6)
    # logit adjustment: the prior is added to the logits inside the loss
    prior = torch.tensor([0.7, 0.2, 0.1]).log()
    adjusted = F.cross_entropy(scale * F.normalize(regions, dim=-1) @ F.normalize(vocab, dim=-1).t() + prior, hard)
    assert torch.allclose(region_name_loss(regions, hard, vocab, scale, prior), adjusted, atol=1e-6)
    # a frequent class is penalised less for being predicted: the adjusted loss of a rare label is higher
    rare = torch.full((4,), 2)
    assert region_name_loss(regions, rare, vocab, scale, prior) > region_name_loss(regions, rare, vocab, scale)
    with pytest.raises(ValueError, match="labels"):
        region_name_loss(regions, targets[:, :2], vocab, scale)
    with pytest.raises(ValueError, match="log_prior"):
        region_name_loss(regions, hard, vocab, scale, prior[:2])
