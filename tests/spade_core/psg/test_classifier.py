import math

import pytest
import torch
import torch.nn.functional as F

from spade_core.psg.classifier import OpenVocabClassifier, fuse_probabilities, mask_pool, pooled_logits


def _text(c, e=8, seed=0):
    return F.normalize(torch.randn(c, e, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_fusion_matches_hand_computation():
    p_diff = torch.tensor([[[0.5, 0.3, 0.2]]])
    p_pool = torch.tensor([[[0.1, 0.6, 0.3]]])
    raw = [0.5**0.34 * 0.1**0.66, 0.3**0.34 * 0.6**0.66, 0.2**0.34 * 0.3**0.66]
    expected = torch.tensor([[[r / sum(raw) for r in raw]]])
    torch.testing.assert_close(fuse_probabilities(p_diff, p_pool, alpha=0.34), expected)
    assert fuse_probabilities(p_diff, p_pool).argmax(-1).item() == 1  # default alpha is 0.34


def test_fusion_switches_return_the_other_source():
    p = torch.softmax(torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1)), -1)
    assert fuse_probabilities(p, None) is p
    assert fuse_probabilities(None, p) is p
    torch.testing.assert_close(fuse_probabilities(p, p.flip(-1), alpha=1.0), p)
    torch.testing.assert_close(fuse_probabilities(p, p.flip(-1), alpha=0.0), p.flip(-1))
    with pytest.raises(ValueError, match="at least one"):
        fuse_probabilities(None, None)
    with pytest.raises(ValueError, match="alpha"):
        fuse_probabilities(p, p, alpha=1.5)
    with pytest.raises(ValueError, match="same shape"):
        fuse_probabilities(p, p[..., :4])


def test_fusion_handles_zero_probabilities():
    out = fuse_probabilities(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 1))


def test_mask_pool_hand_made():
    dense = torch.arange(2 * 2 * 2, dtype=torch.float32).view(1, 2, 2, 2)  # E=2, 2x2 map
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0, 0, :] = 1.0  # top row
    masks[0, 1, 1, 1] = 0.5  # one soft pixel
    pooled = mask_pool(dense, masks)
    assert pooled.shape == (1, 3, 2)
    torch.testing.assert_close(pooled[0, 0], torch.tensor([0.5, 4.5]))
    torch.testing.assert_close(pooled[0, 1], torch.tensor([3.0, 7.0]))
    assert torch.equal(pooled[0, 2], torch.zeros(2))  # empty mask


def test_mask_pool_resizes_masks():
    dense = torch.zeros(1, 1, 2, 2)
    dense[0, 0, :, 1] = 1.0  # right half is 1
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :, 4:] = 1.0  # right half at higher resolution
    masks[0, 1, :, :4] = 1.0
    pooled = mask_pool(dense, masks)
    torch.testing.assert_close(pooled[0, :, 0], torch.tensor([1.0, 0.0]))
    up = mask_pool(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(up, torch.ones(1, 1, 1))


def test_classifier_follows_vocabulary_size_and_uses_cosine():
    torch.manual_seed(0)
    clf = OpenVocabClassifier(in_dim=16, embed_dim=8, init_temperature=10.0)
    h = torch.randn(2, 5, 16)
    for c in (3, 11):
        assert clf(h, _text(c)).shape == (2, 5, c + 1)
    logits = clf(h, _text(3))
    assert logits.abs().max() <= 10.0 + 1e-4  # |cos| <= 1 times temperature
    expected = 10.0 * F.normalize(clf.proj(h), dim=-1) @ _text(3).t()
    torch.testing.assert_close(logits[..., :3], expected)
    # a base-vocabulary logit is unchanged when the vocabulary grows (open vocabulary)
    torch.testing.assert_close(clf(h, torch.cat([_text(3), _text(4, seed=9)]))[..., :3], expected)


def test_temperature_and_none_class_are_learnable():
    torch.manual_seed(0)
    clf = OpenVocabClassifier(16, 8, init_temperature=5.0)
    assert math.isclose(clf.temperature.item(), 5.0, rel_tol=1e-5)
    clf(torch.randn(1, 4, 16), _text(3)).logsumexp(-1).sum().backward()
    assert clf.log_temperature.grad is not None and clf.log_temperature.grad != 0
    assert clf.none_embed.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="text_emb"):
        clf(torch.randn(1, 4, 16), _text(3, e=6))
    with pytest.raises(ValueError, match="init_temperature"):
        OpenVocabClassifier(16, 8, init_temperature=-1.0)


def test_pooled_logits_shape_and_empty_mask():
    pooled = torch.zeros(1, 2, 8)
    pooled[0, 0] = _text(3)[1] * 4.0
    logits = pooled_logits(pooled, _text(3), torch.tensor(7.0))
    assert logits.shape == (1, 2, 3)
    assert logits[0, 0].argmax() == 1 and math.isclose(logits[0, 0, 1].item(), 7.0, rel_tol=1e-5)
    assert torch.equal(logits[0, 1], torch.zeros(3))
