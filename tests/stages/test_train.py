import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline import features as features_module
from pipeline.datasets.classes import read_classes
from pipeline.datasets.index import read_index
from pipeline.datasets.splits import load_split
from pipeline.psg_data import training_target, vocabularies

from .conftest import run_stage_in, tiny_params_dict


def test_train_outputs_and_curve(tiny_trained):
    ws = tiny_trained
    config = json.loads((ws / "artifacts/train/config.json").read_text())
    arch = config["model"]["architecture"]
    assert arch["hidden_dim"] == 32 and arch["num_queries"] == 8
    assert config["test_vocabulary"]["object_names"][:2] == ["red ball", "blue box"]
    state = load_file(str(ws / "artifacts/train/model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    rows = list(csv.DictReader((ws / "artifacts/train_curve.csv").read_text().splitlines()))
    assert len(rows) == 2 * 3  # 2 epochs x ceil(12 / 4) steps
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert {"loss_rel", "loss_rqc", "loss_mask"} <= set(rows[0])
    assert (ws / "artifacts/feature_cache/train.zarr").is_dir()


def test_resume_after_crash_gives_identical_weights(tiny_trained, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(tiny_trained, ws)
    shutil.rmtree(ws / "artifacts/train_checkpoints")
    shutil.rmtree(ws / "artifacts/train")
    raw = tiny_params_dict()
    monkeypatch.setenv("SPADE_STOP_AFTER_EPOCH", "0")
    run_stage_in(ws, "train", raw, monkeypatch)  # stops after epoch 0's checkpoint, writes no outputs
    assert not (ws / "artifacts/train").exists()
    assert [d.name for d in (ws / "artifacts/train_checkpoints").iterdir()] == ["step-0000003"]
    monkeypatch.delenv("SPADE_STOP_AFTER_EPOCH")

    def no_recompute(*args, **kwargs):
        raise AssertionError("the feature cache should have been reused")

    monkeypatch.setattr(features_module.FeatureCache, "build", no_recompute)
    run_stage_in(ws, "train", raw, monkeypatch)
    got = load_file(str(ws / "artifacts/train/model.safetensors"))
    want = load_file(str(tiny_trained / "artifacts/train/model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_open_vocabulary_targets_drop_novel_classes(tiny_base):
    records = read_index(tiny_base / "data/prepared/index/train.parquet")
    classes = read_classes(tiny_base / "data/prepared/classes.json")
    split = load_split("synthetic", "ovdr")
    base, full = vocabularies(classes, split)
    assert len(full.object_ids) == 16 and len(base.object_ids) == 16 - len(split.novel_objects)
    assert not set(base.predicate_ids) & split.novel_predicates
    for record in records:
        target = training_target(record, split, base)
        novel = [c in split.novel_objects for c in record.category_ids]
        assert len(target["labels"]) == novel.count(False)
        globals_ = [base.object_ids[i] for i in target["labels"].tolist()]
        assert not set(globals_) & split.novel_objects
        kept_preds = {base.predicate_ids[p] for p in target["relations"][:, 2].tolist()}
        assert not kept_preds & split.novel_predicates
        assert target["masks"].shape[0] == len(target["labels"])
        if len(target["relations"]):
            assert target["relations"][:, :2].max() < len(target["labels"])


def test_train_refuses_missing_calibration(tiny_base, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(tiny_base, ws)
    with pytest.raises(FileNotFoundError, match="run the `calibrate` stage first"):
        run_stage_in(ws, "train", tiny_params_dict(), monkeypatch)
    assert not Path(ws / "artifacts/train").exists()


def test_vlm_only_baseline_trains_on_clip_features_without_the_unet(trained_workspace, monkeypatch):
    """model.backbone=clip (paper Figure 1 / Table 4 baseline): the pyramid reads the frozen dense CLIP map, the
    UNet is never called, and evaluate rebuilds the same features from config.json."""
    from spade_core.psg import features as core_features

    ws = trained_workspace
    shutil.rmtree(ws / "artifacts/train_checkpoints")
    raw = tiny_params_dict(model={"backbone": "clip", "rgt": {"num_blocks": 0}})

    def no_unet(*args, **kwargs):
        raise AssertionError("the VLM-only baseline must not run the UNet")

    monkeypatch.setattr(core_features.UNetFeatureExtractor, "__call__", no_unet)
    run_stage_in(ws, "train", raw, monkeypatch)
    config = json.loads((ws / "artifacts/train/config.json").read_text())
    assert config["backbone"] == "clip" and config["feature_channels"] == [config["clip_dim"]]
    assert config["model"]["architecture"]["rgt_blocks"] == 0
    run_stage_in(ws, "evaluate", raw, monkeypatch)
    metrics = json.loads((ws / "artifacts/metrics.json").read_text())
    assert 0.0 <= metrics["closed"]["R@50"] <= 1.0


def test_feature_cache_is_built_in_batches_of_train_batch_size(trained_workspace, monkeypatch):
    shutil.rmtree(trained_workspace / "artifacts/feature_cache")
    shutil.rmtree(trained_workspace / "artifacts/train_checkpoints")
    seen: list[int] = []
    build = features_module.FeatureCache.build

    def spy(self, frozen, batches, load, bar):
        seen.extend(len(b) for b in batches)
        return build(self, frozen, batches, load, bar)

    monkeypatch.setattr(features_module.FeatureCache, "build", spy)
    run_stage_in(trained_workspace, "train", tiny_params_dict(train={"epochs": 1, "batch_size": 5}), monkeypatch)
    assert seen == [5, 5, 2]  # 12 images, train.batch_size 5 (not a fixed 16)
