"""The PSG model of the pipeline: built from the params (``train``), saved, loaded back and run on images
(``evaluate`` and ``spade predict``).

:func:`psg_config` is the one mapping from ``params.yaml`` (``model`` + ``train`` sections) to
``spade_core.psg.SpadePSGConfig``; ``artifacts/train/config.json`` records that config (``"model"``) next to
the stage's metadata, and :func:`load_trained` rebuilds the model from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline import paths
from pipeline.features import FrozenFeatures
from pipeline.hashing import tree_digest
from pipeline.io import atomic_dir
from pipeline.models import LoadedModels
from pipeline.params import EvaluateParams, ModelParams, TrainParams
from pipeline.student import load_student
from spade_core.calibration.clip import OBJECT_TEMPLATES, PREDICATE_TEMPLATES, encode_text
from spade_core.psg.config import (
    ArchitectureConfig,
    CriterionConfig,
    InferenceConfig,
    PSGLossWeights,
    SpadePSGConfig,
)
from spade_core.psg.model import SpadePSG
from spade_core.psg.postprocess import restrict_triplets


def psg_config(
    model: ModelParams, train: TrainParams, feature_channels: Sequence[int], clip_dim: int, task: str = "masks"
) -> SpadePSGConfig:
    """The ``SpadePSGConfig`` of the params: every field the params expose comes from them (the design
    constants keep ``spade_core``'s defaults). ``feature_channels`` / ``clip_dim``: of the frozen features;
    ``task``: ``masks`` (PSG) or ``boxes`` (VG), from the prepared data (:func:`pipeline.psg_data.model_task`)."""
    return SpadePSGConfig(
        architecture=ArchitectureConfig(
            task=task,
            feature_channels=tuple(int(c) for c in feature_channels),
            clip_dim=int(clip_dim),
            hidden_dim=model.hidden_dim,
            num_queries=model.num_queries,
            num_heads=model.num_heads,
            decoder_layers=model.decoder_layers,
            rgt_blocks=model.rgt.num_blocks,
            use_lcnl=model.rgt.use_lcnl,
            use_lcnnl=model.rgt.use_lcnnl,
            use_lcl=model.rgt.use_lcl,
            graph_dilation=model.graph.dilation,
            semantic_threshold=model.graph.semantic_threshold,
            eta=model.relation.eta,
            max_pairs=model.relation.max_pairs,
            min_pairs=model.relation.min_pairs,
            duplicate_iou=model.relation.duplicate_iou,
            box_source=model.box_source,
        ),
        criterion=CriterionConfig(
            use_rqc=train.use_rqc,
            rqc_pairs=train.rqc_pairs,
            no_object_weight=train.no_object_weight,
            loss_weights=PSGLossWeights(
                rel=train.loss_weights.rel, rqc=train.loss_weights.rqc, mask=train.loss_weights.mask
            ),
        ),
        inference=TRAINING_INFERENCE,
    )


# Training never reads the fused scores (the loss uses the decoder classifier only): the model is trained and
# saved with the decoder classifier alone, and `evaluate` / `predict` choose the classification sources
# (``evaluate.alpha``, ``evaluate.use_diffusion_logits``, ``evaluate.use_pooled_logits``; paper Table 7) at load,
# so that one trained model serves every row of Table 7.
TRAINING_INFERENCE = InferenceConfig(alpha=1.0, use_diffusion_logits=True, use_pooled_logits=False)


def inference_config(evaluate: EvaluateParams) -> InferenceConfig:
    """The classification sources of ``evaluate`` / ``predict`` (paper Table 7): ``P = P_diff^alpha *
    P_pool^(1-alpha)`` with either source switchable off; and ``evaluate.all_pairs`` (eq. 13's gate off)."""
    return InferenceConfig(alpha=evaluate.alpha, use_diffusion_logits=evaluate.use_diffusion_logits,
                           use_pooled_logits=evaluate.use_pooled_logits, all_pairs=evaluate.all_pairs)


def build_psg_model(
    model: ModelParams, train: TrainParams, feature_channels: list[int], clip_dim: int, task: str = "masks"
) -> SpadePSG:
    """A freshly initialised ``SpadePSG`` for the params (initialisation draws from the global torch RNG)."""
    return SpadePSG(psg_config(model, train, feature_channels, clip_dim, task))


MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def save_trained(train_dir: Path, model: SpadePSG, meta: dict) -> None:
    """Write ``train_dir/{model.safetensors, config.json}`` atomically (the folder appears whole or not at all).

    ``config.json`` = ``{"model": model.config.to_dict(), **meta}``; the train stage's ``meta`` holds
    backbone, feature_blocks, pixel_stride, feature_channels, clip_dim, image_size, train_vocabulary,
    test_vocabulary, split, identity, steps (:func:`load_trained` needs identity, backbone, feature_blocks,
    pixel_stride; ``evaluate`` / ``predict`` image_size).
    """
    if "model" in meta:
        raise ValueError("save_trained: meta must not have a 'model' key (it is the model's config)")
    missing = [k for k in ("identity", "backbone", "feature_blocks", "pixel_stride", "image_size") if k not in meta]
    if missing:
        raise ValueError(f"save_trained: meta lacks {missing}, which loading the model needs")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = json.dumps({"model": model.config.to_dict(), **meta}, indent=2) + "\n"  # fails before any write
    with atomic_dir(train_dir) as tmp:
        save_file(state, str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(text)


@torch.no_grad()
def text_embeddings(
    clip, object_names: Sequence[str], predicate_names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP text embeddings of object and predicate names (prompt templates averaged): ([O, E], [P, E]) float32.
    The classifier's weights, in training (base vocabulary) and at test time (any vocabulary) alike."""
    obj = encode_text(clip, list(object_names), OBJECT_TEMPLATES)
    pred = encode_text(clip, list(predicate_names), PREDICATE_TEMPLATES)
    return obj.float(), pred.float()


@dataclass
class TrainedPSG:
    model: SpadePSG
    features: FrozenFeatures
    config: dict
    models: LoadedModels

    @property
    def region_key(self) -> str:
        """Key of the predicted regions: ``masks`` (mask task, PSG) or ``boxes`` (box task, VG)."""
        return "boxes" if self.model.config.architecture.task == "boxes" else "masks"

    @torch.no_grad()
    def vocabulary_embeddings(self, object_names: Sequence[str], predicate_names: Sequence[str]):
        """Text embeddings of any vocabulary (open vocabulary: names never seen in training work too)."""
        if not object_names or not predicate_names:
            raise ValueError("the object and predicate vocabularies must each name at least one class")
        device = next(self.model.parameters()).device
        return tuple(x.to(device) for x in text_embeddings(self.models.clip, object_names, predicate_names))

    @torch.no_grad()
    def predict(
        self, images01: torch.Tensor, image_sizes: Sequence[tuple[int, int]], obj_text, pred_text, max_triplets: int
    ) -> list[dict[str, np.ndarray]]:
        """images [B,3,S,S] in [0,1] -> per image masks bool [N,H,W] (mask task) or boxes float [N,4] xyxy
        pixels (box task), at ``image_sizes``; labels, scores, triplets [T,4] (subject, object, predicate, score)
        ranked by score."""
        feats, dense = self.features(images01)
        out = self.model(feats, dense, obj_text, pred_text)
        preds = self.model.predict(out, list(image_sizes), max_triplets=max_triplets)
        return [{k: v.cpu().numpy() for k, v in p.items()} for p in preds]


def keep_detections(pred: dict[str, np.ndarray], min_score: float) -> dict[str, np.ndarray]:
    """A prediction restricted to its detections: objects with score >= ``min_score`` and a non-empty region
    (mask pixels, or a box of positive area), the triplets between them in their ranked order, subject / object
    renumbered. For showing a scene graph (``spade predict``); ``evaluate`` scores the model's full output."""
    if "masks" in pred:
        visible = pred["masks"].reshape(len(pred["masks"]), -1).any(axis=1)
    else:
        boxes = np.asarray(pred["boxes"]).reshape(-1, 4)
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = visible & (np.asarray(pred["scores"]) >= min_score)
    triplets = torch.from_numpy(np.asarray(pred["triplets"]).reshape(-1, 4))
    rows = restrict_triplets(triplets, torch.from_numpy(keep)).numpy()
    out = {k: v[keep] for k, v in pred.items() if k != "triplets"}
    return {**out, "triplets": rows}


def load_trained(
    models: LoadedModels,
    inference: InferenceConfig,
    train_dir: Path = paths.TRAIN,
    calibrate_dir: Path = paths.CALIBRATE,
) -> TrainedPSG:
    """The trained model of ``train_dir`` on the features it was trained on, predicting with ``inference``
    (:func:`inference_config`; replaces the training-time one recorded in ``config.json``)."""
    config_path = Path(train_dir) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: run the `train` stage first (dvc repro train)")
    config = json.loads(config_path.read_text())
    current = {
        "teacher": models.teacher_identity,
        "clip": models.clip_identity,
        "student": tree_digest(Path(calibrate_dir)),
    }
    for key, value in current.items():
        if config["identity"][key] != value:
            raise ValueError(
                f"{train_dir}: trained with {key} {config['identity'][key]}, but the loaded {key} is "
                f"{value} ({calibrate_dir if key == 'student' else 'artifacts/models'}); rerun `train`"
            )
    student = load_student(models, calibrate_dir)
    features = FrozenFeatures(models, student, config["feature_blocks"], config.get("pixel_stride"),
                              config.get("backbone", "unet"))
    try:
        psg = replace(SpadePSGConfig.from_dict(config["model"]), inference=inference)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: not a model config this code can build ({err}); rerun `train`") from None
    arch = psg.architecture
    if list(arch.feature_channels) != list(features.channels) or arch.clip_dim != models.clip.embed_dim:
        raise ValueError(
            f"{config_path}: trained on features {list(arch.feature_channels)} / CLIP width {arch.clip_dim}, "
            f"but the loaded models give {list(features.channels)} / {models.clip.embed_dim}; rerun `train`"
        )
    model = SpadePSG(psg)
    device = next(student.unet.parameters()).device
    model.load_state_dict(load_file(str(Path(train_dir) / MODEL_FILE)))
    model.to(device).eval()
    return TrainedPSG(model=model, features=features, config=config, models=models)
