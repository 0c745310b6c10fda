"""Frozen per-image features for the PSG model, and their Zarr cache.

The calibrated student (UNet + LoRA + adapter conditioning) and CLIP are frozen during ``train``, so the UNet
block features at t = 0 and the dense CLIP map of an image never change: :class:`FrozenFeatures` computes
them and :class:`FeatureCache` stores them once (one chunk per image) in ``artifacts/feature_cache/<split>.zarr``
for reuse across epochs. The cache records the identity of everything that determines the features (teacher,
CLIP, calibrated weights, image list, size, blocks) and is rebuilt when any of it changes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from pipeline.images import vae_range
from pipeline.io import replace_path, sweep_temps, temp_path
from pipeline.models import LoadedModels
from pipeline.student import Student, student_condition
from spade_core.diffusion.models import encode_images
from spade_core.psg.features import UNetFeatureExtractor

BACKBONES = ("unet", "clip")


class FrozenFeatures:
    """images [B,3,S,S] in [0,1] -> (backbone features ``list[[B,C_l,h_l,w_l]]``, dense CLIP [B,E,h,w]).

    ``backbone="unet"`` (SPADE): the calibrated student's UNet block outputs at t = 0 on the image's VAE latent.
    ``backbone="clip"`` (the VLM-only baseline of the paper's Figure 1 / Table 4): the frozen dense CLIP map
    alone, in place of the UNet features (the UNet is not run).

    With ``pixel_stride`` (not the paper's method; off by default) the image itself, area-downsampled to stride
    ``pixel_stride`` and scaled to [-1, 1], is appended as a last 3-channel map, a high-resolution RGB input in
    the role of Mask2Former's stride-4 backbone level.

    Dtypes: the VAE and UNet run in the run's dtype (``model.dtype``; float32 latents and conditioning are cast
    to it at the call, by ``encode_images`` and ``UNetFeatureExtractor``); CLIP and the captioner run in float32;
    everything returned is float32, for the float32 PSG head (the cache stores float16).
    """

    def __init__(
        self,
        models: LoadedModels,
        student: Student,
        block_indices: Sequence[int] | None,
        pixel_stride: int | None = None,
        backbone: str = "unet",
    ):
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        self.models, self.student, self.backbone = models, student, backbone
        self.extractor = UNetFeatureExtractor(student.unet, block_indices) if backbone == "unet" else None
        self.pixel_stride = pixel_stride
        first = list(self.extractor.channels) if self.extractor is not None else [student.captioner.embed_dim]
        self.channels: list[int] = first + ([3] if pixel_stride else [])
        self.device = next(student.unet.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        images = images.to(self.device)
        dense = self.student.captioner.dense_features(self.models.clip.preprocess(images)).float()
        if self.extractor is not None:
            latents = encode_images(self.models.diffusion.vae, vae_range(images))
            cond = student_condition(self.student, images)
            feats = [f.float() for f in self.extractor(latents, 0, cond)]
        else:
            feats = [dense]
        if self.pixel_stride:
            size = (images.shape[-2] // self.pixel_stride, images.shape[-1] // self.pixel_stride)
            feats.append(vae_range(F.interpolate(images.float(), size=size, mode="area")))
        return feats, dense


class FeatureCache:
    """A Zarr group with arrays ``feat0..featK`` [N,C_l,h_l,w_l] (float16) and ``dense`` [N,E,h,w]."""

    def __init__(self, location: Path, identity: str, num_images: int):
        self.location, self.identity, self.num_images = Path(location), identity, num_images
        self.group: zarr.Group | None = None
        if self.location.exists():
            group = zarr.open_group(self.location, mode="r+")
            if dict(group.attrs).get("identity") == identity and dict(group.attrs).get("complete"):
                self.group = group
            else:
                shutil.rmtree(self.location)

    @property
    def ready(self) -> bool:
        return self.group is not None

    def build(self, compute, batches: Sequence[Sequence[int]], load_images, progress=None) -> None:
        """Fill the cache: ``compute(images) -> (feats, dense)``, ``load_images(indices) -> [B,3,S,S]``."""
        sweep_temps(self.location)
        tmp = temp_path(self.location)
        group = zarr.open_group(tmp, mode="w")
        arrays: list[zarr.Array] = []
        for idx in batches:
            feats, dense = compute(load_images(idx))
            outs = [*feats, dense]
            if not arrays:
                names = [f"feat{i}" for i in range(len(feats))] + ["dense"]
                arrays = [
                    group.create_array(
                        n, shape=(self.num_images, *o.shape[1:]), chunks=(1, *o.shape[1:]), dtype="float16"
                    )
                    for n, o in zip(names, outs)
                ]
            for arr, o in zip(arrays, outs):
                arr[idx[0] : idx[-1] + 1] = o.cpu().numpy().astype(np.float16)
            if progress is not None:
                progress.update(len(idx))
        group.attrs.update({"identity": self.identity, "complete": True, "num_feats": len(arrays) - 1})
        replace_path(tmp, self.location)
        self.group = zarr.open_group(self.location, mode="r")

    def read(self, indices: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        assert self.group is not None
        n = int(self.group.attrs["num_feats"])
        idx = np.asarray(indices)
        feats = [
            torch.from_numpy(self.group[f"feat{i}"].get_orthogonal_selection((idx,)).astype(np.float32))
            for i in range(n)
        ]
        dense = torch.from_numpy(self.group["dense"].get_orthogonal_selection((idx,)).astype(np.float32))
        return feats, dense
