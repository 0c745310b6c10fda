"""UNet block features -> 4-level feature pyramid (ODISE / VPD style).

`UNetFeatureExtractor` runs a (frozen) `UNet2DConditionModel` once at a given timestep (t = 0 for SPADE) and
returns the outputs of chosen UNet blocks, captured with forward hooks. Blocks are numbered over the flattened
list `down_blocks + [mid_block] + up_blocks`. The default (`default_block_indices`) depends on the depth:

* UNets with at least 4 up blocks (the Stable Diffusion 1.x/2.x layout: 4 down, 1 mid, 4 up):
  `decoder_block_indices` -- the mid block and, for each resolution the decoder produces, the last up block
  that outputs it, i.e. decoder features at every resolution as ODISE and VPD use them. For SD:
  `mid, up_blocks[0], up_blocks[1], up_blocks[3]` = indices `[4, 5, 6, 8]`, strides 8, 4, 2, 1 relative to the
  latent (image strides 64, 32, 16, 8), channels 1280, 1280, 1280, 320.
* shallower UNets (the tiny presets): `every_third_block_indices` (0, 3, 6, ...), the rule SPADE shipped
  with, kept so the tiny pipeline's results do not change. Tiny-random UNet (2 down, 1 mid, 2 up):
  down_blocks[0], up_blocks[0] (strides 2, 1); tiny teacher (3 down, 1 mid, 3 up): down_blocks[0], mid,
  up_blocks[2] (strides 2, 4, 1). (The decoder rule would give mid + up_blocks[1] = [2, 4] and
  mid, up_blocks[0], up_blocks[2] = [3, 4, 6] for them.)

Strides are those of the block *outputs* (an up block's output is after its upsampler).

Dtypes: the UNet runs in its own dtype (latents and conditioning are cast to it at the call, so a bfloat16 /
float16 UNet can be fed float32 inputs) and the features come back in `output_dtype` (float32 by default) for
the PSG head, which trains in float32.

`FeaturePyramid` projects the captured maps to `hidden_dim` channels and builds `num_levels` levels ordered
finest first. Mask resolution: the finest level (and the per-pixel mask features) has twice the size of the
largest captured UNet map, i.e. `H, W = 2 * max(h_l), 2 * max(w_l)`. With the tiny default (largest captured
map at latent resolution, VAE factor 8) masks are at stride 4 of the image, as in Mask2Former (a 128 x 128
image -> 16 x 16 latent -> 32 x 32 masks); so are they with the SD decoder default (up_blocks[3] is at the
latent resolution). Level k has size `ceil(H / 2**k)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the UNet (its output is not needed)."""


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    """The flattened block list `down_blocks + [mid_block] + up_blocks` of a diffusers UNet."""
    blocks = list(unet.down_blocks)
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks + list(unet.up_blocks)


def _block_channels_and_strides(blocks: list[nn.Module]) -> tuple[list[int], list[int]]:
    """Output channels and stride (relative to the latent grid) of each block, read from the modules."""
    channels, strides, stride = [], [], 1
    for block in blocks:
        if getattr(block, "downsamplers", None) is not None:
            stride *= 2
        if getattr(block, "upsamplers", None) is not None:
            stride //= 2
        channels.append(int(block.resnets[-1].out_channels))
        strides.append(max(stride, 1))
    return channels, strides


def every_third_block_indices(unet: nn.Module) -> list[int]:
    """`[0, 3, 6, ...]` over `down_blocks + [mid_block] + up_blocks` (the tiny presets' default)."""
    return list(range(0, len(unet_blocks(unet)), 3))


def decoder_block_indices(unet: nn.Module) -> list[int]:
    """The mid block and, for each distinct output resolution of the up blocks, the last up block with it.

    Indices into `unet_blocks(unet)`, coarsest first (SD 1.x/2.x: `[4, 5, 6, 8]`). Without a mid block, the
    up blocks alone.
    """
    blocks = unet_blocks(unet)
    _, strides = _block_channels_and_strides(blocks)
    first_up = len(blocks) - len(unet.up_blocks)
    chosen = [first_up - 1] if getattr(unet, "mid_block", None) is not None else []
    last_at: dict[int, int] = {}
    for i in range(first_up, len(blocks)):
        last_at[strides[i]] = i
    return chosen + sorted(last_at.values())


SD_DEPTH_UP_BLOCKS = 4


def default_block_indices(unet: nn.Module) -> list[int]:
    """`decoder_block_indices` for UNets with >= 4 up blocks (SD-shaped), else `every_third_block_indices`."""
    if len(unet.up_blocks) >= SD_DEPTH_UP_BLOCKS:
        return decoder_block_indices(unet)
    return every_third_block_indices(unet)


def unet_dtype(unet: nn.Module) -> torch.dtype:
    """The dtype the UNet computes in (`unet.dtype`, else that of `conv_in` or the first parameter)."""
    dtype = getattr(unet, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    conv_in = getattr(unet, "conv_in", None)
    return conv_in.weight.dtype if conv_in is not None else next(unet.parameters()).dtype


class UNetFeatureExtractor:
    """Capture the outputs of chosen UNet blocks in one UNet call.

    Args:
        unet: a diffusers `UNet2DConditionModel` (kept frozen: call it under `torch.no_grad()` by default).
        block_indices: indices into `down_blocks + [mid_block] + up_blocks`; None = `default_block_indices`.
        no_grad: run the UNet under `torch.no_grad()` (the UNet is frozen in SPADE).
        output_dtype: dtype of the returned features (default float32, for the PSG head); None: the UNet's.

    `__call__(latents [B,4,h,w], timestep, cond [B,T,C_cross]) -> list[Tensor [B,C_l,h_l,w_l]]`, in the
    order of `block_indices`; inputs of any float dtype and device are cast to the UNet's. `.channels` and
    `.strides` (relative to the latent) describe the outputs. Call `remove()` to detach the hooks.
    """

    def __init__(self, unet: nn.Module, block_indices: Sequence[int] | None = None, no_grad: bool = True,
                 output_dtype: torch.dtype | None = torch.float32):
        blocks = unet_blocks(unet)
        if block_indices is None:
            block_indices = default_block_indices(unet)
        block_indices = [int(i) for i in block_indices]
        if not block_indices:
            raise ValueError("block_indices must name at least one UNet block")
        bad = [i for i in block_indices if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"block_indices {bad} out of range: the UNet has {len(blocks)} blocks")
        if len(set(block_indices)) != len(block_indices):
            raise ValueError(f"block_indices must be distinct, got {block_indices}")
        self.unet = unet
        self.block_indices = block_indices
        self.no_grad = no_grad
        self.output_dtype = output_dtype
        all_channels, all_strides = _block_channels_and_strides(blocks)
        self.channels = [all_channels[i] for i in block_indices]
        self.strides = [all_strides[i] for i in block_indices]
        self._captured: dict[int, Tensor] = {}
        self._active = False
        self._handles = [blocks[i].register_forward_hook(self._make_hook(i)) for i in block_indices]

    def _make_hook(self, index: int):
        last = max(self.block_indices)

        def hook(module: nn.Module, inputs, output) -> None:
            if not self._active:
                return
            self._captured[index] = output[0] if isinstance(output, tuple) else output
            if index == last:
                raise _StopForward

        return hook

    def __call__(self, latents: Tensor, timestep: int | float | Tensor, cond: Tensor, **unet_kwargs) -> list[Tensor]:
        if latents.dim() != 4:
            raise ValueError(f"latents must be [B,C,h,w], got shape {tuple(latents.shape)}")
        param = next(self.unet.parameters())
        dtype = unet_dtype(self.unet)
        latents, cond = latents.to(param.device, dtype), cond.to(param.device, dtype)
        self._captured = {}
        self._active = True
        try:
            with torch.set_grad_enabled(not self.no_grad and torch.is_grad_enabled()):
                self.unet(latents, timestep, encoder_hidden_states=cond, **unet_kwargs)
        except _StopForward:
            pass
        finally:
            self._active = False
        feats = [self._captured[i] for i in self.block_indices]
        self._captured = {}
        if self.output_dtype is not None:
            feats = [f.to(self.output_dtype) for f in feats]
        return feats

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (the largest power of two <= 32 that divides `channels`)."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class FeaturePyramid(nn.Module):
    """Project UNet block features to a `num_levels`-level pyramid plus per-pixel mask features.

    Each input map gets a 1x1 conv + GroupNorm to `hidden_dim`; level k is the sum of all projected maps
    resized (bilinear) to the level size, followed by a 3x3 conv + GroupNorm + GELU. The mask features are a
    1x1 conv of the finest level.

    Args:
        in_channels: channels C_l of the input maps (`UNetFeatureExtractor.channels`).
        hidden_dim: D.
        num_levels: number of pyramid levels.

    `forward(feats: list[Tensor [B,C_l,h_l,w_l]]) -> (pyramid list[Tensor [B,D,h_k,w_k]] finest first,
    mask_features [B,D,H,W])` with `H, W = 2 * max(h_l), 2 * max(w_l)` and `h_k = ceil(H / 2**k)`.
    """

    def __init__(self, in_channels: Sequence[int], hidden_dim: int, num_levels: int = 4):
        super().__init__()
        if not in_channels:
            raise ValueError("in_channels must be a non-empty list")
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.in_channels = [int(c) for c in in_channels]
        self.hidden_dim = hidden_dim
        self.num_levels = num_levels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), group_norm(hidden_dim)) for c in self.in_channels
        )
        self.output = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1), group_norm(hidden_dim), nn.GELU())
            for _ in range(num_levels)
        )
        self.mask_proj = nn.Conv2d(hidden_dim, hidden_dim, 1)

    def level_sizes(self, feats: Sequence[Tensor]) -> list[tuple[int, int]]:
        """Sizes (h_k, w_k) of the pyramid levels for the given input maps, finest first."""
        h = 2 * max(f.shape[-2] for f in feats)
        w = 2 * max(f.shape[-1] for f in feats)
        return [(-(-h // 2**k), -(-w // 2**k)) for k in range(self.num_levels)]

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"feats: expected {len(self.in_channels)} maps, got {len(feats)}")
        for f, c in zip(feats, self.in_channels):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"feats: expected a [B,{c},h,w] map, got shape {tuple(f.shape)}")
        dtype = self.mask_proj.weight.dtype
        laterals = [proj(f.to(dtype)) for proj, f in zip(self.lateral, feats)]
        pyramid = []
        for size, out in zip(self.level_sizes(feats), self.output):
            x = sum(F.interpolate(lat, size=size, mode="bilinear", align_corners=False) for lat in laterals)
            pyramid.append(out(x))
        return pyramid, self.mask_proj(pyramid[0])
