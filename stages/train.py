"""Stage ``train``: the SPADE PSG model on frozen calibrated-UNet features.

Features (UNet block outputs of the calibrated student at t = 0, and the dense CLIP map) are computed once
and cached (``train.cache_features``); the model (``spade_core.psg.SpadePSG``) is trained with AdamW, lr x0.1
at ``train.lr_drop_at`` of training, gradient clipping, ``L = L_rel + 0.6 L_rqc + 1.0 L_mask``. Under ``ovr`` /
``ovdr`` novel relations / instances are removed from the targets and the classifier sees the base vocabulary
only. Checkpoints every epoch (``artifacts/train_checkpoints``); a rerun resumes from the last one and ends
with the same weights as an uninterrupted run. Outputs: ``artifacts/train/{model.safetensors,config.json}``
and the loss curve ``artifacts/train_curve.csv`` (DVC plots).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipeline import paths
from pipeline.datasets.index import IndexRecord, read_index
from pipeline.dist import DistContext, allreduce_grads, barrier, init_distributed, shutdown, split_global_batch
from pipeline.features import FeatureCache, FrozenFeatures, cache_identity
from pipeline.images import to_tensor
from pipeline.models import load_models, resolve_device, tree_identity
from pipeline.params import ScopedParams
from pipeline.psg_data import Vocabulary, load_split, read_classes, training_target, vocabularies
from pipeline.student import load_student
from spade_core.calibration.clip import OBJECT_TEMPLATES, PREDICATE_TEMPLATES, encode_text
from spade_core.psg.model import SpadePSG

PARAMS = ("data.split", "model", "train")
CURVE_FIELDS = ("step", "epoch", "lr", "loss", "loss_rel", "loss_rqc", "loss_mask")


def build_model(p: ScopedParams, channels: list[int], clip_dim: int) -> SpadePSG:
    m, t = p.model, p.train
    return SpadePSG(
        feature_channels=channels,
        clip_dim=clip_dim,
        hidden_dim=m.hidden_dim,
        num_queries=m.num_queries,
        num_heads=m.num_heads,
        rgt_blocks=m.rgt.num_blocks,
        use_lcnl=m.rgt.use_lcnl,
        use_lcnnl=m.rgt.use_lcnnl,
        use_lcl=m.rgt.use_lcl,
        eta=m.relation.eta,
        max_pairs=m.relation.max_pairs,
        graph_dilation=m.graph.dilation,
        semantic_threshold=m.graph.semantic_threshold,
        alpha=m.alpha,
        use_diffusion_logits=m.use_diffusion_logits,
        use_pooled_logits=m.use_pooled_logits,
        use_rqc=t.use_rqc,
        decoder_layers=m.decoder_layers,
        no_object_weight=t.no_object_weight,
        loss_weights={"rel": t.loss_weights.rel, "rqc": t.loss_weights.rqc, "mask": t.loss_weights.mask},
    )


@torch.no_grad()
def text_embeddings(clip, vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    obj = encode_text(clip, list(vocab.object_names), OBJECT_TEMPLATES)
    pred = encode_text(clip, list(vocab.predicate_names), PREDICATE_TEMPLATES)
    return obj.float(), pred.float()


def load_images(records: list[IndexRecord], indices, size: int) -> torch.Tensor:
    return torch.stack([to_tensor(records[i].load_image(), size) for i in indices])


def feature_source(models, student, records, p, name: str, ctx: DistContext, cache_dir: Path, use_cache: bool):
    """``get(indices) -> (feats, dense)``, from the Zarr cache (built once by rank 0) or computed on the fly."""
    frozen = FrozenFeatures(models, student, p.model.feature_blocks, p.model.pixel_stride)
    size = p.model.image_size
    if not use_cache:
        return frozen, lambda idx: frozen(load_images(records, idx, size))
    ident = cache_identity(
        teacher=models.teacher_identity,
        clip=models.clip_identity,
        student=tree_identity(paths.CALIBRATE),
        images=[r.image_id for r in records],
        size=size,
        blocks=p.model.feature_blocks,
        pixel_stride=p.model.pixel_stride,
        dtype=p.model.dtype,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    location = cache_dir / f"{name}.zarr"
    if ctx.is_main:
        cache = FeatureCache(location, ident, len(records))
        if not cache.ready:
            bs = 16
            batches = [list(range(i, min(i + bs, len(records)))) for i in range(0, len(records), bs)]
            with tqdm(total=len(records), desc=f"features[{name}]", unit="img") as bar:
                cache.build(frozen, batches, lambda idx: load_images(records, idx, size), bar)
    barrier(ctx)
    cache = FeatureCache(location, ident, len(records))
    return frozen, cache.read


def settings_hash(p: ScopedParams, identity: dict) -> str:
    raw = {"model": p.model.model_dump(), "train": p.train.model_dump(), "split": p.data.split, **identity}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def latest_checkpoint(settings: str) -> Path | None:
    if not paths.TRAIN_CHECKPOINTS.is_dir():
        return None
    found = sorted(paths.TRAIN_CHECKPOINTS.glob("epoch-*.json"))
    for meta in reversed(found):
        if json.loads(meta.read_text()).get("settings") == settings:
            return meta
    return None


def save_checkpoint(model, opt, epoch: int, step: int, settings: str, curve: list[dict]) -> None:
    paths.TRAIN_CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    stem = paths.TRAIN_CHECKPOINTS / f"epoch-{epoch:04d}"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, f"{stem}.safetensors")
    torch.save({"optimizer": opt.state_dict(), "rng": torch.get_rng_state()}, f"{stem}.pt")
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "step": step, "settings": settings, "curve": curve}))
    tmp.replace(f"{stem}.json")  # written last: a checkpoint counts only once all three files exist


def run(p: ScopedParams) -> None:
    device = resolve_device(p.model.device)
    ctx = init_distributed(device)
    t = p.train
    torch.manual_seed(t.seed)
    models = load_models(paths.MODELS, device=str(device), dtype=p.model.dtype)
    student = load_student(models, paths.CALIBRATE)
    records = read_index(paths.index_path("train"))
    split = load_split()
    base, full = vocabularies(read_classes(), split)
    obj_text, pred_text = (x.to(device) for x in text_embeddings(models.clip, base))
    frozen, get_features = feature_source(
        models, student, records, p, "train", ctx, paths.FEATURE_CACHE, t.cache_features
    )
    targets = [training_target(r, split, base) for r in records]
    model = build_model(p, frozen.channels, models.clip.embed_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    micro, _ = split_global_batch(t.batch_size, ctx.world_size)
    steps_per_epoch = math.ceil(len(records) / t.batch_size)
    total_steps = t.epochs * steps_per_epoch
    drop_step = int(t.lr_drop_at * total_steps)
    identity = {
        "teacher": models.teacher_identity,
        "clip": models.clip_identity,
        "student": tree_identity(paths.CALIBRATE),
    }
    settings = settings_hash(p, identity)

    start_epoch, step, curve = 0, 0, []
    meta = latest_checkpoint(settings)
    if meta is not None:
        info = json.loads(meta.read_text())
        model.load_state_dict(load_file(str(meta.with_suffix(".safetensors")), device=str(device)))
        state = torch.load(meta.with_suffix(".pt"), weights_only=True)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch, step, curve = info["epoch"] + 1, info["step"], info["curve"]
        if ctx.is_main:
            print(f"train: resuming after epoch {info['epoch']} ({meta.name})")

    stop_after = int(os.environ.get("SPADE_STOP_AFTER_EPOCH", "-1"))
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not ctx.is_main)
    t0, first_step = time.perf_counter(), step
    model.train()
    for epoch in range(start_epoch, t.epochs):
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        for b in range(steps_per_epoch):
            batch = order[b * t.batch_size : (b + 1) * t.batch_size].tolist()
            local = batch[ctx.rank :: ctx.world_size]
            lr = t.lr * (0.1 if step >= drop_step else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            parts = {"loss": 0.0, "loss_rel": 0.0, "loss_rqc": 0.0, "loss_mask": 0.0}
            global_masks = sum(int(targets[i]["labels"].numel()) for i in batch)
            for c in range(0, len(local), micro):
                idx = local[c : c + micro]
                feats, dense = get_features(idx)
                out = model([f.to(device) for f in feats], dense.to(device), obj_text, pred_text)
                # mask losses normalised by the global batch's masks (as with one process), whatever the split
                num_masks = max(global_masks, 1) * len(idx) / len(batch)
                losses = model.loss(out, [targets[i] for i in idx], num_masks=num_masks)
                (losses["loss"] * len(idx) / len(batch)).backward()
                for k in parts:
                    parts[k] += losses[k].detach().item() * len(idx) / len(batch)
            allreduce_grads([q for q in model.parameters() if q.requires_grad], ctx)
            parts = global_losses(parts, ctx, device)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            step += 1
            curve.append({"step": step, "epoch": epoch, "lr": lr, **{k: round(v, 6) for k, v in parts.items()}})
            bar.update(1)
            bar.set_postfix(
                loss=f"{parts['loss']:.3f}",
                rel=f"{parts['loss_rel']:.3f}",
                it_s=f"{(step - first_step) / (time.perf_counter() - t0):.2f}",
            )
        if ctx.is_main:
            save_checkpoint(model, opt, epoch, step, settings, curve)
        barrier(ctx)
        if epoch == stop_after:
            raise KeyboardInterrupt(f"SPADE_STOP_AFTER_EPOCH={stop_after}")
    bar.close()
    if ctx.is_main:
        write_outputs(model, curve, p, frozen.channels, models.clip.embed_dim, base, full, split, identity)
    shutdown(ctx)


def global_losses(parts: dict[str, float], ctx: DistContext, device: torch.device) -> dict[str, float]:
    """Sum the per-rank shares of the logged losses: the curve shows the global-batch loss on every rank."""
    if not ctx.enabled:
        return parts
    values = torch.tensor(list(parts.values()), dtype=torch.float64, device=device)  # NCCL: CUDA tensors only
    torch.distributed.all_reduce(values)
    return dict(zip(parts, values.tolist()))


def write_outputs(model, curve, p, channels, clip_dim, base, full, split, identity) -> None:
    tmp = paths.TRAIN.with_name(paths.TRAIN.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    config = {
        "model": model.config,
        "feature_blocks": p.model.feature_blocks,
        "pixel_stride": p.model.pixel_stride,
        "feature_channels": channels,
        "clip_dim": clip_dim,
        "image_size": p.model.image_size,
        "train_vocabulary": base.to_json(),
        "test_vocabulary": full.to_json(),
        "split": {
            "name": split.name,
            "novel_predicates": sorted(split.novel_predicates),
            "novel_objects": sorted(split.novel_objects),
        },
        "identity": identity,
        "steps": len(curve),
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(paths.TRAIN, ignore_errors=True)
    tmp.rename(paths.TRAIN)
    with open(paths.TRAIN_CURVE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(curve)
    first, last = curve[0]["loss"], curve[-1]["loss"]
    print(f"train: {len(curve)} steps, loss {first:.3f} -> {last:.3f} -> {paths.TRAIN}")


if __name__ == "__main__":
    from stages.cli import run_stage_main

    run_stage_main("train")
