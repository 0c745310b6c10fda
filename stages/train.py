"""Stage ``train``: the SPADE PSG model on frozen calibrated-UNet features.

Front door of :func:`pipeline.psg_training.train_psg` (features, targets, schedule and resume are described
there and in docs/DESIGN.md §4.3). ``SPADE_STOP_AFTER_EPOCH=e`` stops after epoch e's checkpoint without writing
outputs (to test resume). Outputs: ``artifacts/train/{model.safetensors,config.json}``
(:func:`pipeline.psg_model.save_trained`) and the loss curve ``artifacts/train_curve.csv`` (DVC plots).
"""

from __future__ import annotations

import os

import torch

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.datasets.index import read_index
from pipeline.datasets.splits import read_split_file
from pipeline.dist import init_distributed, shutdown
from pipeline.engine import write_curve
from pipeline.io import prepare_outputs
from pipeline.models import load_models, resolve_device
from pipeline.params import ScopedParams
from pipeline.psg_data import model_task, training_target, vocabularies
from pipeline.psg_model import build_psg_model, save_trained, text_embeddings
from pipeline.psg_training import (
    CURVE_FIELDS,
    PSGTraining,
    curve_rows,
    feature_source,
    frozen_features,
    settings_digest,
    train_psg,
    training_identity,
)
from pipeline.student import load_student

PARAMS = ("data.split", "model", "train")
STOP_ENV = "SPADE_STOP_AFTER_EPOCH"


def run(p: ScopedParams) -> None:
    prepare_outputs(paths.TRAIN, paths.TRAIN_CHECKPOINTS, paths.FEATURE_CACHE, paths.TRAIN_CURVE)
    m, t = p.model, p.train
    device = resolve_device(m.device)
    ctx = init_distributed(device)
    models = load_models(paths.MODELS, device=str(device), dtype=m.dtype)
    student = load_student(models, paths.CALIBRATE)
    records = read_index(paths.index_path("train"))
    split = read_split_file(paths.SPLIT_JSON)
    base, full = vocabularies(read_classes(paths.CLASSES_JSON), split)
    obj_text, pred_text = (x.to(device) for x in text_embeddings(models.clip, base.object_names, base.predicate_names))
    identity = training_identity(models, paths.CALIBRATE)
    frozen = frozen_features(models, student, m)
    cache_key = {**identity, "images": [r.image_id for r in records], "size": m.image_size,
                 "backbone": m.backbone, "blocks": m.feature_blocks, "pixel_stride": m.pixel_stride,
                 "dtype": m.dtype, "feature_batch": t.batch_size}
    get_features = feature_source(frozen, records, m.image_size, cache_key, "train", ctx,
                                  paths.FEATURE_CACHE if t.cache_features else None, t.batch_size)
    targets = [training_target(r, split, base) for r in records]
    torch.manual_seed(t.seed)  # here: whatever drew from the RNG before (a feature-cache build) must not matter
    model = build_psg_model(m, t, frozen.channels, models.clip.embed_dim, model_task(records)).to(device)
    job = PSGTraining(model, targets, get_features, obj_text, pred_text)
    stop = int(os.environ.get(STOP_ENV, "-1"))
    result = train_psg(job, t, settings_digest(m, t, p.data.split, identity), ctx, device,
                       stop_after_epoch=stop if stop >= 0 else None)
    if result.interrupted:
        print(f"train: stopping after step {result.step} ({STOP_ENV}={stop})")
    elif ctx.is_main:
        meta = {
            "backbone": m.backbone, "feature_blocks": m.feature_blocks, "pixel_stride": m.pixel_stride,
            "feature_channels": frozen.channels,
            "clip_dim": models.clip.embed_dim, "image_size": m.image_size, "train_vocabulary": base.to_json(),
            "test_vocabulary": full.to_json(),
            "split": {"name": split.name, "novel_predicates": sorted(split.novel_predicates),
                      "novel_objects": sorted(split.novel_objects)},
            "identity": identity, "steps": len(result.history),
        }  # fmt: skip
        save_trained(paths.TRAIN, model, meta)
        write_curve(paths.TRAIN_CURVE, curve_rows(result.history), CURVE_FIELDS)
        first, last = result.history[0]["loss"], result.history[-1]["loss"]
        print(f"train: {len(result.history)} steps, loss {first:.3f} -> {last:.3f} -> {paths.TRAIN}")
    shutdown(ctx)


if __name__ == "__main__":
    from pipeline.runner import stage_main

    stage_main("train", PARAMS, run)
