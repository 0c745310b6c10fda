import pytest
import torch

from spade_core.psg.instance_decoder import InstanceDecoder
from spade_core.psg.position import sine_position_encoding


def _pyramid(batch=2, dim=16, size=16, levels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pyramid = [torch.randn(batch, dim, size // 2**k, size // 2**k, generator=g) for k in range(levels)]
    return pyramid, torch.randn(batch, dim, size, size, generator=g)


def test_output_shapes_and_deep_supervision():
    torch.manual_seed(0)
    decoder = InstanceDecoder(hidden_dim=16, num_queries=6, num_layers=3, num_heads=4)
    pyramid, mask_features = _pyramid()
    out = decoder(pyramid, mask_features)
    assert out.query_feats.shape == (2, 6, 16)
    assert out.mask_logits.shape == (2, 6, 16, 16)
    assert len(out.aux) == 3  # initial queries + layers 1 and 2
    for feats, masks in out.aux:
        assert feats.shape == (2, 6, 16) and masks.shape == (2, 6, 16, 16)
    # the mask logits are the dot product of the mask embedding with the mask features
    expected = torch.einsum("bqd,bdhw->bqhw", decoder.mask_embed(out.query_feats), mask_features)
    torch.testing.assert_close(out.mask_logits, expected)
    # every layer changes the queries
    assert not torch.allclose(out.aux[-1][0], out.query_feats)


def test_attention_mask_blocks_background_and_keeps_empty_queries_open():
    decoder = InstanceDecoder(hidden_dim=8, num_queries=2, num_heads=2)
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :2, :2] = 5.0  # query 0: top-left quarter; query 1: empty
    blocked = decoder.attention_mask(logits, (2, 2))
    assert blocked.shape == (2, 2, 4)  # [B*heads, Q, h*w]
    assert blocked[0, 0].tolist() == [False, True, True, True]
    assert blocked[0, 1].tolist() == [False, False, False, False]
    assert torch.equal(blocked[0], blocked[1])  # same mask for each head


def test_masked_cross_attention_ignores_blocked_memory():
    """A query whose previous mask covers only the left half must not see memory on the right half."""
    torch.manual_seed(0)
    decoder = InstanceDecoder(hidden_dim=16, num_queries=4, num_layers=1, num_heads=4)
    pyramid, _ = _pyramid(batch=1)
    # mask features +v on the left half, -v on the right: each initial mask is exactly one half
    v = torch.randn(16)
    mask_features = torch.zeros(1, 16, 16, 16)
    mask_features[..., :8] = v[:, None, None]
    mask_features[..., 8:] = -v[:, None, None]
    with torch.no_grad():
        _, init_masks = decoder.predict_masks(decoder.query_feat.weight[None], mask_features)
    left = init_masks[0, :, 0, 0] > 0
    assert 0 < int(left.sum()) < 4, "the test needs queries on both halves"

    captured = []
    decoder.layers[0].cross_attn.register_forward_hook(lambda m, a, out: captured.append(out[0].detach()))
    decoder(pyramid, mask_features)
    changed = [p.clone() for p in pyramid]
    changed[3][..., 1:] += 3 * torch.randn_like(changed[3][..., 1:])  # coarsest level (2x2), right column
    decoder(changed, mask_features)
    before, after = captured
    torch.testing.assert_close(before[0, left], after[0, left])
    assert not torch.allclose(before[0, ~left], after[0, ~left])


def test_unmasked_attention_is_independent_of_the_mask_predictions():
    """masked_attention=False (DETR): the queries are those of the masked decoder run with no attention mask,
    and changing the mask head (hence every mask prediction) leaves them unchanged."""
    pyramid, mask_features = _pyramid()
    torch.manual_seed(0)
    detr = InstanceDecoder(hidden_dim=16, num_queries=6, num_layers=3, masked_attention=False)
    torch.manual_seed(0)
    masked = InstanceDecoder(hidden_dim=16, num_queries=6, num_layers=3)
    masked.attention_mask = lambda mask_logits, size: None
    out = detr(pyramid, mask_features)
    torch.testing.assert_close(out.query_feats, masked(pyramid, mask_features).query_feats)
    with torch.no_grad():
        for p in detr.mask_embed.parameters():
            p.add_(torch.randn_like(p))
    changed = detr(pyramid, mask_features)
    assert not torch.allclose(changed.mask_logits, out.mask_logits)
    torch.testing.assert_close(changed.query_feats, out.query_feats)
    for (f0, _), (f1, _) in zip(out.aux, changed.aux):
        torch.testing.assert_close(f0, f1)
    # the masked decoder does depend on its mask predictions
    torch.manual_seed(0)
    masked = InstanceDecoder(hidden_dim=16, num_queries=6, num_layers=3)
    before = masked(pyramid, mask_features).query_feats
    with torch.no_grad():
        for p in masked.mask_embed.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(masked(pyramid, mask_features).query_feats, before)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    decoder = InstanceDecoder(hidden_dim=16, num_queries=5, num_layers=3)
    pyramid, mask_features = _pyramid()
    pyramid = [p.requires_grad_(True) for p in pyramid]
    out = decoder(pyramid, mask_features)
    loss = out.mask_logits.sigmoid().mean() + out.query_feats.square().mean()
    loss = loss + sum(m.sigmoid().mean() + f.square().mean() for f, m in out.aux)
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # levels 1..3 are attended to; level 0 (the finest) only carries the mask features
    assert all(p.grad.abs().sum() > 0 for p in pyramid[1:])


@pytest.mark.parametrize("centred", [False, True])
def test_sine_position_encoding(centred):
    pe = sine_position_encoding(3, 5, 8, centred=centred)
    assert pe.shape == (15, 8) and pe.dtype == torch.float32
    assert len({tuple(r.tolist()) for r in pe.round(decimals=5)}) == 15  # distinct per position
    assert sine_position_encoding(3, 5, 8, dtype=torch.float16, centred=centred).dtype == torch.float16
    for dim in (7, 6):
        with pytest.raises(ValueError, match="divisible by 4"):
            sine_position_encoding(2, 2, dim, centred=centred)


def test_sine_position_encoding_layouts():
    """DETR: y then x, sin/cos interleaved per frequency, coordinates (i+1)/n; centred: sin block then cos
    block per axis, coordinates (i+0.5)/n."""
    # dim 8: per axis 2 frequencies (1 and 1/100); the first one's channels are checked
    detr = sine_position_encoding(1, 2, 8).view(2, 8)  # x = pi, 2 pi (up to 1e-6)
    torch.testing.assert_close(detr[0, 4:6], torch.tensor([0.0, -1.0]), atol=1e-4, rtol=0)  # sin, cos(pi)
    torch.testing.assert_close(detr[1, 4:6], torch.tensor([0.0, 1.0]), atol=1e-4, rtol=0)
    centred = sine_position_encoding(1, 2, 8, centred=True).view(2, 8)  # x = pi/2, 3 pi/2
    torch.testing.assert_close(centred[0, 4:8:2], torch.tensor([1.0, 0.0]), atol=1e-4, rtol=0)  # sin, cos(pi/2)
    torch.testing.assert_close(centred[1, 4:8:2], torch.tensor([-1.0, 0.0]), atol=1e-4, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden_dim"):
        InstanceDecoder(hidden_dim=10, num_queries=4, num_heads=4)
    decoder = InstanceDecoder(hidden_dim=16, num_queries=4)
    pyramid, mask_features = _pyramid()
    with pytest.raises(ValueError, match="pyramid"):
        decoder(pyramid[:3], mask_features)
    with pytest.raises(ValueError, match="mask_features"):
        decoder(pyramid, mask_features[:, :8])
