"""The default feature blocks: decoder features for SD-shaped UNets, the shipped rule for the tiny ones; dtypes."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from spade_core.diffusion.models import TINY_UNET_CONFIG
from spade_core.psg.features import (
    UNetFeatureExtractor,
    decoder_block_indices,
    default_block_indices,
    every_third_block_indices,
    unet_blocks,
)

# Stable Diffusion 1.5's UNet config (runwayml/stable-diffusion-v1-5, unet/config.json), written out: no download.
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)
# SD 2.x: same block layout, wider text conditioning and per-level heads.
SD21_UNET_CONFIG = {**SD15_UNET_CONFIG, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                    "use_linear_projection": True, "sample_size": 96}
# The shipped tiny teacher (pipeline/teacher.py TEACHER_UNET_CONFIG, teacher/weights/unet/config.json).
TEACHER_UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 96), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)


def _meta_unet(config: dict) -> UNet2DConditionModel:
    """The module structure without allocating the weights (860 M parameters for SD)."""
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


@pytest.mark.parametrize("config", [SD15_UNET_CONFIG, SD21_UNET_CONFIG], ids=["sd15", "sd21"])
def test_sd_shaped_default_is_the_decoder_at_every_resolution(config):
    unet = _meta_unet(config)
    if config is SD15_UNET_CONFIG:
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 859.5  # really SD-1.5-sized
    blocks = unet_blocks(unet)
    extractor = UNetFeatureExtractor(unet)
    try:
        assert extractor.block_indices == [4, 5, 6, 8]  # mid, up_blocks[0], up_blocks[1], up_blocks[3]
        assert blocks[4] is unet.mid_block and [blocks[i] for i in (5, 6, 8)] == [unet.up_blocks[j] for j in (0, 1, 3)]
        assert extractor.strides == [8, 4, 2, 1]  # distinct resolutions, relative to the latent
        assert extractor.channels == [1280, 1280, 1280, 320]
    finally:
        extractor.remove()
    assert every_third_block_indices(unet) == [0, 3, 6]  # the former default: down[0], down[3], up[1]


def test_tiny_unets_keep_the_shipped_selection():
    teacher = _meta_unet(TEACHER_UNET_CONFIG)
    assert default_block_indices(teacher) == every_third_block_indices(teacher) == [0, 3, 6]
    assert decoder_block_indices(teacher) == [3, 4, 6]  # what the decoder rule would pick (not the default)
    tiny = _meta_unet(TINY_UNET_CONFIG)
    assert default_block_indices(tiny) == [0, 3]
    assert decoder_block_indices(tiny) == [2, 4]


def test_decoder_strides_match_the_captured_maps_on_an_sd_layout_with_tiny_widths():
    """SD's block types and depth (4 down, mid, 4 up) at tiny widths: real outputs have the predicted strides."""
    config = {**SD15_UNET_CONFIG, "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 8,
              "cross_attention_dim": 16, "attention_head_dim": 4, "layers_per_block": 1, "sample_size": 32}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    extractor = UNetFeatureExtractor(unet)
    try:
        assert extractor.block_indices == [4, 5, 6, 8]
        feats = extractor(torch.randn(1, 4, 32, 32), 0, torch.randn(1, 3, 16))
        assert [f.shape[-1] for f in feats] == [32 // s for s in extractor.strides] == [4, 8, 16, 32]
        assert [f.shape[1] for f in feats] == extractor.channels == [16, 16, 16, 8]
    finally:
        extractor.remove()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_unet_takes_float32_inputs_and_returns_float32(tiny_unet, dtype):
    g = torch.Generator().manual_seed(0)
    latents, cond = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 32, generator=g)
    ref_extractor = UNetFeatureExtractor(tiny_unet)
    want = ref_extractor(latents, 0, cond)
    ref_extractor.remove()
    half = copy.deepcopy(tiny_unet).to(dtype)
    extractor = UNetFeatureExtractor(half)
    try:
        got = extractor(latents, 0, cond)  # float32 inputs, half UNet: cast at the boundary
        assert all(f.dtype == torch.float32 for f in got)
        for g_, w in zip(got, want):
            assert float((g_ - w).norm() / w.norm()) < 0.05
        raw = UNetFeatureExtractor(half, output_dtype=None)
        assert all(f.dtype == dtype for f in raw(latents.double(), 0, cond))
        raw.remove()
    finally:
        extractor.remove()
