"""Training the SPADE PSG model on frozen calibrated-UNet features, on the training engine.

Features (UNet block outputs of the calibrated student at t = 0, and the dense CLIP map) are frozen, so they are
computed once and cached (``train.cache_features``, :class:`pipeline.features.FeatureCache`). The model
(``spade_core.psg.SpadePSG``, built by :func:`pipeline.psg_model.build_psg_model`) is trained with AdamW, lr x0.1
from ``train.lr_drop_at`` of training, gradient clipping and ``L = L_rel + 0.6 L_rqc + 1.0 L_mask``. Under ``ovr``
/ ``ovdr`` novel relations / instances are removed from the targets and the classifier sees the base vocabulary
only (:func:`pipeline.psg_data.training_target`).

Order: epoch ``e`` visits the images in ``randperm(N)`` seeded by ``(train.seed, e)``; optimizer step ``s`` takes
batch ``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch``, and rank r of W every W-th image of it, so the
data order is a pure function of the step and a run resumed from a checkpoint (one per epoch) ends with the
weights of an uninterrupted run. See docs/DESIGN.md §4.3 (context reasoning).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.datasets.index import IndexRecord
from pipeline.dist import DistContext, barrier, split_global_batch
from pipeline.engine import Checkpointer, ProgressBar, Trainer, TrainResult
from pipeline.features import FeatureCache, FrozenFeatures
from pipeline.hashing import code_digest, json_digest, tree_digest
from pipeline.images import load_images
from pipeline.models import LoadedModels
from pipeline.params import ModelParams, TrainParams
from pipeline.student import Student
from spade_core.psg.model import SpadePSG

CURVE_FIELDS = ("step", "epoch", "lr", "loss", "loss_rel", "loss_rqc", "loss_mask")
LOSS_KEYS = ("loss", "loss_rel", "loss_rqc", "loss_mask")
FeatureFn = Callable[[list[int]], tuple[list[torch.Tensor], torch.Tensor]]


def feature_source(frozen: FrozenFeatures, records: list[IndexRecord], size: int, identity: dict, name: str,
                   ctx: DistContext, cache_dir: Path | None, batch_size: int) -> FeatureFn:
    """``get(indices) -> (feats, dense)``: from the Zarr cache under ``cache_dir`` (built once by rank 0 in
    batches of ``batch_size`` images, ``train.batch_size``; keyed by ``identity``), or computed on the fly when
    ``cache_dir`` is None."""
    if cache_dir is None:
        return lambda idx: frozen(load_images([records[i] for i in idx], size))
    ident = json_digest(identity)
    cache_dir.mkdir(parents=True, exist_ok=True)
    location = cache_dir / f"{name}.zarr"
    if ctx.is_main:
        cache = FeatureCache(location, ident, len(records))
        if not cache.ready:
            n = len(records)
            batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
            with tqdm(total=n, desc=f"features[{name}]", unit="img") as bar:
                cache.build(frozen, batches, lambda idx: load_images([records[i] for i in idx], size), bar)
    barrier(ctx)
    return FeatureCache(location, ident, len(records)).read


def settings_digest(model: ModelParams, train: TrainParams, split: str, identity: dict) -> str:
    """Digest of everything that determines the weights (the checkpoints' key): the params, the inputs'
    identities and the code (``code_digest``: a checkpoint of other code is not resumed)."""
    return json_digest({"model": model.model_dump(), "train": train.model_dump(), "split": split, **identity,
                        "code": code_digest()})


@dataclass
class PSGTraining:
    """What :func:`train_psg` needs besides the params: the model to train, its targets and text embeddings."""

    model: SpadePSG
    targets: list[dict[str, torch.Tensor]]
    get_features: FeatureFn
    obj_text: torch.Tensor
    pred_text: torch.Tensor


def train_psg(job: PSGTraining, t: TrainParams, settings: str, ctx: DistContext, device: torch.device,
              stop_after_epoch: int | None = None) -> TrainResult:
    """Train ``job.model`` in place for ``t.epochs`` epochs (resuming from a checkpoint of ``settings``)."""
    model, targets, n = job.model, job.targets, len(job.targets)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    micro, _ = split_global_batch(t.batch_size, ctx.world_size)
    steps_per_epoch = math.ceil(n / t.batch_size)
    total_steps = t.epochs * steps_per_epoch
    drop_step = int(t.lr_drop_at * total_steps)
    orders: dict[int, list[int]] = {}

    def epoch_order(epoch: int) -> list[int]:
        if epoch not in orders:
            g = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
            orders.clear()
            orders[epoch] = torch.randperm(n, generator=g).tolist()
        return orders[epoch]

    def run_step(step: int) -> dict[str, float]:
        b = step % steps_per_epoch
        batch = epoch_order(step // steps_per_epoch)[b * t.batch_size : (b + 1) * t.batch_size]
        local = batch[ctx.rank :: ctx.world_size]
        parts = dict.fromkeys(LOSS_KEYS, 0.0)
        global_masks = sum(int(targets[i]["labels"].numel()) for i in batch)
        for c in range(0, len(local), micro):
            idx = local[c : c + micro]
            feats, dense = job.get_features(idx)
            out = model([f.to(device) for f in feats], dense.to(device), job.obj_text, job.pred_text)
            # mask losses normalised by the global batch's masks (as with one process), whatever the split
            num_masks = max(global_masks, 1) * len(idx) / len(batch)
            losses = model.loss(out, [targets[i] for i in idx], num_masks=num_masks)
            (losses["loss"] * len(idx) / len(batch)).backward()
            for k in parts:
                parts[k] += losses[k].detach().item() * len(idx) / len(batch)
        return parts

    def lr_at(step: int) -> float:
        return t.lr * (0.1 if step >= drop_step else 1.0)

    stop = None if stop_after_epoch is None else (stop_after_epoch + 1) * steps_per_epoch
    trainer = Trainer(
        run_step=run_step, optimizer=opt, parameters=[q for q in model.parameters() if q.requires_grad],
        total_steps=total_steps, ctx=ctx, device=device, named_tensors=model.state_dict,
        restore=model.load_state_dict, checkpointer=Checkpointer(paths.TRAIN_CHECKPOINTS, settings),
        checkpoint_every=steps_per_epoch, lr_at=lr_at, grad_clip=t.grad_clip,
        row_extra=lambda s: {"epoch": s // steps_per_epoch, "lr": lr_at(s)}, stop_after=stop,
        hooks=[ProgressBar("train", ("loss", "loss_rel"))],
    )  # fmt: skip
    trainer.resume()
    if trainer.resumed_from is not None and ctx.is_main:
        print(f"train: resuming after step {trainer.step} ({trainer.resumed_from})")
    model.train()
    return trainer.train()


def curve_rows(history: list[dict]) -> list[dict]:
    """History rows as written to ``train_curve.csv`` (losses rounded to 6 decimals)."""
    return [{**row, **{k: round(row[k], 6) for k in LOSS_KEYS}} for row in history]


def training_identity(models: LoadedModels, student_dir: Path) -> dict:
    """Identities of the teacher, CLIP and calibrated student a PSG model is trained on (checked at load)."""
    return {"teacher": models.teacher_identity, "clip": models.clip_identity, "student": tree_digest(student_dir)}


def frozen_features(models: LoadedModels, student: Student, model: ModelParams) -> FrozenFeatures:
    return FrozenFeatures(models, student, model.feature_blocks, model.pixel_stride, model.backbone)
