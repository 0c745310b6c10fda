"""Shared fixtures for the spade_core.psg tests: a tiny random UNet, a tiny synthetic PSG batch, and
`make_psg_config` (a `SpadePSGConfig` from flat keyword overrides)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from spade_core.psg.config import (
    ArchitectureConfig,
    CriterionConfig,
    InferenceConfig,
    PSGLossWeights,
    SpadePSGConfig,
)

# The values these tests were written for (the keyword defaults of the former `SpadePSG(...)` constructor;
# note graph_dilation 3 and use_pooled_logits True, where params.yaml has 2 and false).
PSG_TEST_VALUES = {
    "hidden_dim": 64,
    "num_queries": 16,
    "num_heads": 4,
    "decoder_layers": 3,
    "rgt_blocks": 8,
    "use_lcnl": True,
    "use_lcnnl": True,
    "use_lcl": True,
    "graph_dilation": 3,
    "semantic_threshold": 0.8,
    "eta": 0.65,
    "max_pairs": 32,
    "use_rqc": True,
    "no_object_weight": 0.1,
    "loss_weights": PSGLossWeights(rel=1.0, rqc=0.6, mask=1.0),
    "alpha": 0.34,
    "use_diffusion_logits": True,
    "use_pooled_logits": True,
}


def make_psg_config(feature_channels: Sequence[int], clip_dim: int = 16, **overrides) -> SpadePSGConfig:
    """`SpadePSGConfig` from `PSG_TEST_VALUES` + `overrides`, each flat key sent to the section that has it."""
    values = {"feature_channels": tuple(feature_channels), "clip_dim": clip_dim, **PSG_TEST_VALUES, **overrides}
    values.setdefault("min_pairs", values["max_pairs"])  # every slot filled (what these tests were written for)
    sections = {}
    for name, cls in (("architecture", ArchitectureConfig), ("criterion", CriterionConfig),
                      ("inference", InferenceConfig)):
        names = {f.name for f in fields(cls)}
        sections[name] = cls(**{k: values.pop(k) for k in list(values) if k in names})
    if values:
        raise TypeError(f"make_psg_config: unknown fields {sorted(values)}")
    return SpadePSGConfig(**sections)

TINY_UNET_CONFIG = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
}


@pytest.fixture(scope="session")
def tiny_unet():
    """Random tiny `UNet2DConditionModel` (2 down, 1 mid, 2 up blocks), eval mode, frozen."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG).eval()
    unet.requires_grad_(False)
    return unet


def _rect_masks(boxes: list[tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """Boolean `[S,size,size]` masks of boxes given in cells of an 8 x 8 grid: (y0, x0, y1, x1)."""
    cell = size // 8
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        masks[k, y0 * cell : y1 * cell, x0 * cell : x1 * cell] = True
    return masks


def make_synthetic_psg(seed: int = 0, size: int = 64, feat_dim: int = 16, clip_dim: int = 16) -> dict:
    """Four images of rectangles (distinct classes per image) with relations, and model inputs that encode
    them: UNet-like features = a fixed random projection of a per-pixel class code (at 4x4 and 8x8 for a
    64 px image, like the tiny UNet's blocks 0 and 3), and a dense "CLIP" map = the text embedding of the
    class of each pixel (so mask pooling classifies objects correctly).

    Returns dict(feats [two tensors], dense [4,E,8,8], obj_text [6,E], pred_text [3,E], targets, channels).
    """
    g = torch.Generator().manual_seed(seed)
    c_obj, c_pred = 6, 3
    obj_text = F.normalize(torch.randn(c_obj, clip_dim, generator=g), dim=-1)
    pred_text = F.normalize(torch.randn(c_pred, clip_dim, generator=g), dim=-1)
    code = torch.randn(c_obj + 1, feat_dim, generator=g)  # last row = background
    proj = [torch.randn(feat_dim, feat_dim, generator=g) / 4 for _ in range(2)]
    boxes = [
        [(0, 0, 4, 3), (4, 4, 8, 8), (5, 0, 8, 3)],
        [(1, 1, 5, 5), (5, 2, 8, 6)],
        [(0, 4, 3, 8), (3, 0, 8, 3), (4, 4, 7, 7)],
        [(2, 2, 6, 4), (0, 5, 4, 8)],
    ]
    labels = [[0, 1, 2], [3, 4], [5, 0, 2], [1, 3]]
    relations = [[[0, 1, 0], [2, 0, 1]], [[0, 1, 2]], [[1, 2, 0], [0, 1, 1], [2, 0, 2]], [[1, 0, 1]]]
    targets, coarse, fine, dense = [], [], [], []
    for bx, lb, rel in zip(boxes, labels, relations):
        masks = _rect_masks(bx, size)
        lab = torch.tensor(lb)
        ids = torch.full((size, size), c_obj)
        for k in range(len(bx)):
            ids[masks[k]] = lab[k]
        pix = code[ids].permute(2, 0, 1)[None]  # [1,F,H,W]
        coarse.append(torch.einsum("dc,chw->dhw", proj[0], F.adaptive_avg_pool2d(pix, size // 16)[0]))
        fine.append(torch.einsum("dc,chw->dhw", proj[1], F.adaptive_avg_pool2d(pix, size // 8)[0]))
        text = torch.cat([obj_text, torch.zeros(1, clip_dim)])[ids].permute(2, 0, 1)[None]
        dense.append(F.adaptive_avg_pool2d(text, size // 8)[0])
        targets.append({"labels": lab, "masks": masks, "relations": torch.tensor(rel)})
    return {
        "feats": [torch.stack(coarse), torch.stack(fine)],
        "dense": torch.stack(dense),
        "obj_text": obj_text,
        "pred_text": pred_text,
        "targets": targets,
        "channels": [feat_dim, feat_dim],
    }


@pytest.fixture
def synthetic_psg() -> dict:
    return make_synthetic_psg()


@pytest.fixture
def random_psg_inputs() -> dict:
    """Random inputs for B=2, 64 px images, tiny-UNet feature shapes (channels 32 @ 4x4, 64 @ 8x8), E=16,
    5 object and 3 predicate classes, and random targets (masks at 64 x 64)."""
    g = torch.Generator().manual_seed(1)
    targets = [
        {
            "labels": torch.tensor([0, 2, 4]),
            "masks": torch.rand(3, 64, 64, generator=g) > 0.6,
            "relations": torch.tensor([[0, 1, 2], [2, 0, 0]]),
        },
        {"labels": torch.tensor([1]), "masks": torch.rand(1, 64, 64, generator=g) > 0.5,
         "relations": torch.zeros(0, 3, dtype=torch.long)},
    ]
    return {
        "feats": [torch.randn(2, 32, 4, 4, generator=g), torch.randn(2, 64, 8, 8, generator=g)],
        "dense": torch.randn(2, 16, 8, 8, generator=g),
        "obj_text": F.normalize(torch.randn(5, 16, generator=g), dim=-1),
        "pred_text": F.normalize(torch.randn(3, 16, generator=g), dim=-1),
        "targets": targets,
        "channels": [32, 64],
    }


@pytest.fixture
def single_thread():
    """Run a test with one torch thread: on a shared 2-core machine, 2 threads under contention are several
    times slower than 1 for these tiny shapes (measured: 6 s vs 28 s for the fast overfit test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
