import pytest
import torch

from spade_core.psg.features import FeaturePyramid, UNetFeatureExtractor, unet_blocks


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 5, 32, generator=g)


def test_default_blocks_are_every_third(tiny_unet):
    extractor = UNetFeatureExtractor(tiny_unet)
    try:
        assert extractor.block_indices == [0, 3]  # down_blocks[0], up_blocks[0] of 5 blocks
        assert extractor.channels == [32, 64]
        assert extractor.strides == [2, 1]
        latents, cond = _inputs()
        feats = extractor(latents, 0, cond)
        assert [tuple(f.shape) for f in feats] == [(2, 32, 8, 8), (2, 64, 16, 16)]
        assert not any(f.requires_grad for f in feats)
    finally:
        extractor.remove()


def test_captures_the_block_outputs_of_a_full_unet_call(tiny_unet):
    """The early stop after the last hooked block must not change what is captured."""
    blocks = unet_blocks(tiny_unet)
    latents, cond = _inputs()
    reference = {}
    handles = [
        blocks[i].register_forward_hook(
            lambda m, a, out, i=i: reference.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i in (1, 2, 4)
    ]
    with torch.no_grad():
        tiny_unet(latents, 0, encoder_hidden_states=cond)
    for h in handles:
        h.remove()
    extractor = UNetFeatureExtractor(tiny_unet, [4, 1, 2])
    try:
        feats = extractor(latents, 0, cond)
    finally:
        extractor.remove()
    assert extractor.channels == [32, 64, 64]
    for f, i in zip(feats, (4, 1, 2)):
        torch.testing.assert_close(f, reference[i])
    assert feats[1].shape[-1] == 8 and feats[0].shape[-1] == 16


def test_grad_mode_and_remove(tiny_unet):
    latents, cond = _inputs(1)
    extractor = UNetFeatureExtractor(tiny_unet, [3], no_grad=False)
    latents.requires_grad_(True)
    (feat,) = extractor(latents, 0, cond)
    feat.sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    extractor.remove()
    with torch.no_grad():
        out = tiny_unet(latents, 0, encoder_hidden_states=cond).sample  # hooks gone: a full call
    assert out.shape == (1, 4, 16, 16)


@pytest.mark.parametrize("indices", [[5], [-1], [], [0, 0]])
def test_bad_block_indices(tiny_unet, indices):
    with pytest.raises(ValueError, match="block_indices"):
        UNetFeatureExtractor(tiny_unet, indices)


def test_feature_pyramid_shapes_and_gradients():
    torch.manual_seed(0)
    pyramid = FeaturePyramid([32, 64], hidden_dim=24, num_levels=4)
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 64, 16, 16)]
    levels, mask_features = pyramid(feats)
    assert [tuple(x.shape) for x in levels] == [(2, 24, 32, 32), (2, 24, 16, 16), (2, 24, 8, 8), (2, 24, 4, 4)]
    assert mask_features.shape == (2, 24, 32, 32)
    (sum(x.square().mean() for x in levels) + mask_features.square().mean()).backward()
    for name, p in pyramid.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_feature_pyramid_odd_sizes_and_input_dependence():
    torch.manual_seed(0)
    pyramid = FeaturePyramid([8], hidden_dim=16, num_levels=3)
    x = torch.randn(2, 8, 5, 3)
    levels, mask_features = pyramid([x])
    assert [tuple(v.shape[-2:]) for v in levels] == [(10, 6), (5, 3), (3, 2)]
    assert mask_features.shape == (2, 16, 10, 6)
    y = x.clone()
    y[1] = torch.randn(8, 5, 3)  # images are independent (GroupNorm normalises per image)
    levels2, _ = pyramid([y])
    for a, b in zip(levels, levels2):
        torch.testing.assert_close(a[0], b[0])
        assert not torch.allclose(a[1], b[1])


def test_feature_pyramid_bad_input():
    pyramid = FeaturePyramid([8, 16], hidden_dim=16)
    with pytest.raises(ValueError, match="feats"):
        pyramid([torch.randn(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="feats"):
        pyramid([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="in_channels"):
        FeaturePyramid([], hidden_dim=16)
