"""Load the trained PSG model and run it on images (shared by ``evaluate`` and ``spade predict``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline import paths
from pipeline.features import FrozenFeatures
from pipeline.models import LoadedModels, tree_identity
from pipeline.student import load_student
from spade_core.calibration.clip import OBJECT_TEMPLATES, PREDICATE_TEMPLATES, encode_text
from spade_core.psg.model import SpadePSG


@dataclass
class TrainedPSG:
    model: SpadePSG
    features: FrozenFeatures
    config: dict
    models: LoadedModels

    @torch.no_grad()
    def vocabulary_embeddings(self, object_names: Sequence[str], predicate_names: Sequence[str]):
        """Text embeddings of any vocabulary (open vocabulary: names never seen in training work too)."""
        if not object_names or not predicate_names:
            raise ValueError("the object and predicate vocabularies must each name at least one class")
        device = next(self.model.parameters()).device
        obj = encode_text(self.models.clip, list(object_names), OBJECT_TEMPLATES).float().to(device)
        pred = encode_text(self.models.clip, list(predicate_names), PREDICATE_TEMPLATES).float().to(device)
        return obj, pred

    @torch.no_grad()
    def predict(
        self, images01: torch.Tensor, image_sizes: Sequence[tuple[int, int]], obj_text, pred_text, max_triplets: int
    ) -> list[dict[str, np.ndarray]]:
        """images [B,3,S,S] in [0,1] -> per image masks bool [N,H,W] (at ``image_sizes``), labels, scores,
        triplets [T,4] (subject, object, predicate, score) ranked by score."""
        feats, dense = self.features(images01)
        out = self.model(feats, dense, obj_text, pred_text)
        preds = self.model.predict(out, list(image_sizes), max_triplets=max_triplets)
        return [{k: v.cpu().numpy() for k, v in p.items()} for p in preds]


def load_trained(
    models: LoadedModels, train_dir: Path = paths.TRAIN, calibrate_dir: Path = paths.CALIBRATE
) -> TrainedPSG:
    config_path = Path(train_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: run the `train` stage first (dvc repro train)")
    config = json.loads(config_path.read_text())
    current = {
        "teacher": models.teacher_identity,
        "clip": models.clip_identity,
        "student": tree_identity(Path(calibrate_dir)),
    }
    for key, value in current.items():
        if config["identity"][key] != value:
            raise ValueError(
                f"{train_dir}: trained with {key} {config['identity'][key]}, but the loaded {key} is "
                f"{value} ({calibrate_dir if key == 'student' else 'artifacts/models'}); rerun `train`"
            )
    student = load_student(models, calibrate_dir)
    features = FrozenFeatures(models, student, config["feature_blocks"], config.get("pixel_stride"))
    model = SpadePSG(**config["model"])
    device = next(student.unet.parameters()).device
    model.load_state_dict(load_file(str(Path(train_dir) / "model.safetensors")))
    model.to(device).eval()
    return TrainedPSG(model=model, features=features, config=config, models=models)
