"""The embedded CLIP: scenes, pre-training on the engine, and writing it (``spade train-clip``).

In the real setting CLIP was pre-trained on internet captions that name every class, while PSG training
withholds the novel ones. The embedded analogue: the tiny open_clip model of ``model.preset: tiny``
(:data:`spade_core.calibration.clip.TINY_CLIP_CONFIG`) is pre-trained on synthetic scenes whose captions and
region names cover *all* 16 object classes and 10 predicates, drawn from their own seed streams
(``SeedSequence([seed, 4, i])`` for training, ``[seed, 5, i]`` for the held-out report), so they never coincide
with ``prepare``'s images (streams 0/1) or the teacher's (2/3). The pipeline then uses it frozen.

Recipe (:func:`train_clip`; one step = ``batch_size`` scenes; losses in :mod:`spade_core.calibration.clip_losses`):

* ``global``: symmetric InfoNCE between each scene's pooled image embedding and its relation-prompt caption
  (``build_relation_prompt`` over the scene's triplets, as ``invert`` builds the teacher's prompts);
* ``region``: every segment's *mask-pooled dense* feature (``spade_core.psg.mask_pool``, the operation the PSG
  model's pooled second opinion uses) against the text embeddings of all 16 object names;
* ``crop``: one random segment per scene, cropped to its box (10 % margin, ``torchvision.ops.roi_align`` to the
  tower's input size) and encoded whole, against the same 16 names (what ``clip-report``'s crop accuracy reads);
* ``predicate``: the pooled feature of each relation's subject-object union against the 10 predicate names (the
  pooled second opinion of relations), over both regions the SPADE model pools: the union of the two masks
  (PSG) and the union box (VG). The target is every predicate annotated on the pair (a pair can be "left of" and
  "far from"), and the loss is logit-adjusted by the training scenes' predicate frequencies
  (:func:`predicate_log_prior`): trained plainly, the frequent "far from" took every thing-thing pair whose
  predicate the region could not tell, and the novel "beside" and "inside" stayed at 0 % (README, *Embedded
  CLIP*).

The four are summed with equal weights. AdamW with warm-up and cosine decay
(:func:`pipeline.teacher_training.warmup_cosine`), gradient norm clipped at 1, CLIP's learnable temperature
clamped at 100. One generator seeded by ``seed`` draws the batches and crops, so the same arguments give the
same weights on the same machine and thread count. The choice of losses was measured: see ``MODEL_CARD.md``
and the README ("Embedded CLIP").
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from torch import Tensor, nn
from torchvision.ops import roi_align
from transformers import CLIPTokenizer

from pipeline.datasets.classes import ClassLists, load_class_lists
from pipeline.datasets.synthetic import generate_scene
from pipeline.dist import DistContext
from pipeline.engine import Trainer, TrainResult
from pipeline.io import atomic_dir
from pipeline.teacher_training import LossLog, mean_loss, warmup_cosine
from spade_core.calibration.clip import (
    OBJECT_TEMPLATES,
    PREDICATE_TEMPLATES,
    TINY_CLIP_CONFIG,
    TINY_CLIP_NAME,
    build_tiny_clip,
    image_features,
    name_embeddings,
    preprocess_images,
    tiny_clip_model,
)
from spade_core.calibration.clip_losses import image_caption_loss, region_name_loss
from spade_core.diffusion.models import write_clip_tokenizer_files
from spade_core.diffusion.prompts import build_relation_prompt
from spade_core.psg.box_graph import union_box_masks
from spade_core.psg.classifier import mask_pool

SPLIT_TRAIN, SPLIT_HELDOUT = 4, 5
LOSS_TERMS = ("global", "region", "crop", "predicate")
CROP_MARGIN = 0.1
MAX_PAIRS_PER_SCENE = 8  # relations per scene in the predicate loss (a random subset when a scene has more)


@dataclass
class ClipScenes:
    """Synthetic scenes for CLIP pre-training or evaluation.

    images: [N,3,S,S] uint8; segments: [N,S,S] uint8, the index of each pixel's segment in ``labels[i]``;
    labels: per scene [K_i] long category ids (things then stuff, ``classes.object_names`` order);
    boxes: per scene [K_i,4] float xyxy pixels (exclusive right/bottom); relations: per scene [R_i,3] long
    (subject, object, predicate) segment indices; captions: per scene the relation-prompt text.
    """

    images: Tensor
    segments: Tensor
    labels: list[Tensor]
    boxes: list[Tensor]
    relations: list[Tensor]
    captions: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def masks(self, i: int) -> Tensor:
        """[K_i,S,S] float one-hot segment masks of scene ``i``."""
        k = len(self.labels[i])
        return (self.segments[i][None] == torch.arange(k, dtype=torch.uint8)[:, None, None]).float()


def make_clip_scenes(seed: int, split: int, num_scenes: int, image_size: int = 128, min_objects: int = 2,
                     max_objects: int = 5) -> ClipScenes:
    """``num_scenes`` scenes of stream ``split`` (:data:`SPLIT_TRAIN` / :data:`SPLIT_HELDOUT`)."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    classes = load_class_lists("synthetic")
    with tempfile.TemporaryDirectory(prefix="spade-clip-tok-") as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp), local_files_only=True)
    images, segments, labels, boxes, relations, captions = [], [], [], [], [], []
    for i in range(num_scenes):
        scene = generate_scene(np.random.default_rng([seed, split, i]), image_size, min_objects, max_objects)
        ids = [s["id"] for s in scene.segments_info]
        seg = np.full(scene.id_map.shape, 255, dtype=np.uint8)
        box = []
        for k, sid in enumerate(ids):
            mask = scene.id_map == sid
            seg[mask] = k
            ys, xs = np.nonzero(mask)
            box.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        cats = [s["category_id"] for s in scene.segments_info]
        triplets = [(classes.object_names[cats[s]], classes.predicate_classes[p], classes.object_names[cats[o]])
                    for s, o, p in scene.relations]
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1))
        segments.append(torch.from_numpy(seg))
        labels.append(torch.tensor(cats, dtype=torch.long))
        boxes.append(torch.tensor(box, dtype=torch.float32))
        relations.append(torch.tensor(scene.relations, dtype=torch.long).view(-1, 3))
        captions.append(build_relation_prompt(triplets, tokenizer).text)
    return ClipScenes(torch.stack(images), torch.stack(segments), labels, boxes, relations, captions)


def crop_boxes(images: Tensor, boxes: Tensor, size: tuple[int, int], margin: float = CROP_MARGIN) -> Tensor:
    """Crops of ``images`` [B,3,H,W] (float) at ``boxes`` [B,4] xyxy pixels, each widened by ``margin`` of its
    size on every side (clipped to the image) and resampled to ``size`` -> [B,3,*size] (``roi_align``)."""
    h, w = images.shape[-2:]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    widened = torch.stack([(boxes[:, 0] - margin * bw).clamp(0, w), (boxes[:, 1] - margin * bh).clamp(0, h),
                           (boxes[:, 2] + margin * bw).clamp(0, w), (boxes[:, 3] + margin * bh).clamp(0, h)], 1)
    rois = torch.cat([torch.arange(len(boxes), dtype=images.dtype)[:, None], widened.to(images.dtype)], 1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def padded_masks(scenes: ClipScenes, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Segment masks [B,K,S,S] (zero-padded to the largest K) and labels [B,K] (-1 on padding)."""
    k = max(len(scenes.labels[int(i)]) for i in idx)
    s = scenes.segments.shape[-1]
    masks, labels = torch.zeros(len(idx), k, s, s), torch.full((len(idx), k), -1, dtype=torch.long)
    for b, i in enumerate(idx.tolist()):
        n = len(scenes.labels[i])
        masks[b, :n], labels[b, :n] = scenes.masks(i), scenes.labels[i]
    return masks, labels


def union_masks(scenes: ClipScenes, idx: Tensor, g: torch.Generator | None,
                max_pairs: int = MAX_PAIRS_PER_SCENE) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Subject-object union masks [B,P,S,S] (zero-padded), predicates [B,P] (-1 on padding), and the chosen
    relation rows per scene. ``g`` None: every relation (``max_pairs`` ignored), else a random subset."""
    chosen = []
    for i in idx.tolist():
        rel = scenes.relations[i]
        if g is not None and len(rel) > max_pairs:
            rel = rel[torch.randperm(len(rel), generator=g)[:max_pairs]]
        chosen.append(rel)
    p = max(1, max(len(r) for r in chosen))
    s = scenes.segments.shape[-1]
    masks, preds = torch.zeros(len(idx), p, s, s), torch.full((len(idx), p), -1, dtype=torch.long)
    for b, (i, rel) in enumerate(zip(idx.tolist(), chosen)):
        if len(rel):
            seg = scenes.masks(i)
            masks[b, : len(rel)] = torch.maximum(seg[rel[:, 0]], seg[rel[:, 1]])
            preds[b, : len(rel)] = rel[:, 2]
    return masks, preds, chosen


def union_box_regions(scenes: ClipScenes, idx: Tensor, chosen: list[Tensor]) -> Tensor:
    """Masks [B,P,S,S] of the subject-object union *boxes* of the relation rows ``chosen`` (as
    :func:`union_masks` returns them; zero-padded): the region a box model (VG) pools for a pair, rasterised by
    the model's own :func:`~spade_core.psg.box_graph.union_box_masks` (pixel centres inside the box)."""
    s = scenes.segments.shape[-1]
    out = torch.zeros(len(idx), max(1, max(len(r) for r in chosen)), s, s)
    for b, (i, rel) in enumerate(zip(idx.tolist(), chosen)):
        if len(rel):
            out[b, : len(rel)] = union_box_masks(scenes.boxes[i][None] / s, rel[None, :, :2], (s, s))[0]
    return out


def pair_predicate_targets(scenes: ClipScenes, idx: Tensor, chosen: list[Tensor], num_predicates: int) -> Tensor:
    """[B,P,C] multi-hot: for each chosen relation row, every predicate annotated on its (subject, object) pair."""
    out = torch.zeros(len(idx), max(1, max(len(r) for r in chosen)), num_predicates)
    for b, (i, rel) in enumerate(zip(idx.tolist(), chosen)):
        names: dict[tuple[int, int], list[int]] = {}
        for subj, obj, pred in scenes.relations[i].tolist():
            names.setdefault((subj, obj), []).append(pred)
        for r, (subj, obj, _) in enumerate(rel.tolist()):
            out[b, r, names[(subj, obj)]] = 1.0
    return out


def predicate_log_prior(scenes: ClipScenes, num_predicates: int) -> Tensor:
    """[C] log frequency of each predicate among the relations of ``scenes`` (add-one smoothed)."""
    counts = torch.ones(num_predicates)
    for rel in scenes.relations:
        counts += torch.bincount(rel[:, 2], minlength=num_predicates).float()
    return (counts / counts.sum()).log()


def clip_losses(model: nn.Module, tokenizer: Any, scenes: ClipScenes, idx: Tensor, caption_tokens: Tensor,
                classes: ClassLists, g: torch.Generator, terms: tuple[str, ...] = LOSS_TERMS,
                predicate_prior: Tensor | None = None) -> dict[str, Tensor]:
    """The pre-training loss terms (module docstring) of the scenes ``idx``; ``terms`` selects which;
    ``predicate_prior`` the [C] log prior of the predicate term (:func:`predicate_log_prior`; None: plain)."""
    visual = model.visual
    mean, std = visual.preprocess_cfg["mean"], visual.preprocess_cfg["std"]
    size = tuple(visual.image_size)
    scale = model.logit_scale.exp()
    images01 = scenes.images[idx].float() / 255.0
    pooled, dense = image_features(visual, preprocess_images(images01, mean, std, size))
    out: dict[str, Tensor] = {}
    if "global" in terms:
        out["global"] = image_caption_loss(pooled, model.encode_text(caption_tokens[idx]), scale)
    if {"region", "crop"} & set(terms):
        obj_vocab = name_embeddings(model, tokenizer, classes.object_names, OBJECT_TEMPLATES)
    if "region" in terms:
        masks, labels = padded_masks(scenes, idx)
        out["region"] = region_name_loss(mask_pool(dense, masks).flatten(0, 1), labels.flatten(), obj_vocab, scale)
    if "crop" in terms:
        pick = [int(torch.randint(len(scenes.labels[i]), (1,), generator=g)) for i in idx.tolist()]
        boxes = torch.stack([scenes.boxes[i][k] for i, k in zip(idx.tolist(), pick)])
        crop_emb = model.encode_image(preprocess_images(crop_boxes(images01, boxes, size), mean, std, size))
        labels = torch.stack([scenes.labels[i][k] for i, k in zip(idx.tolist(), pick)])
        out["crop"] = region_name_loss(crop_emb, labels, obj_vocab, scale)
    if "predicate" in terms:
        pred_vocab = name_embeddings(model, tokenizer, classes.predicate_classes, PREDICATE_TEMPLATES)
        masks, _, chosen = union_masks(scenes, idx, g)
        target = pair_predicate_targets(scenes, idx, chosen, len(classes.predicate_classes)).flatten(0, 1)
        out["predicate"] = sum(
            region_name_loss(mask_pool(dense, region).flatten(0, 1), target, pred_vocab, scale, predicate_prior)
            for region in (masks, union_box_regions(scenes, idx, chosen))) / 2
    return out


def train_clip(model: nn.Module, scenes: ClipScenes, *, steps: int, lr: float = 1e-3, batch_size: int = 32,
               seed: int = 0, weight_decay: float = 0.1, warmup: int = 100, terms: tuple[str, ...] = LOSS_TERMS,
               log_every: int = 0, log: Any = print) -> TrainResult:
    """Pre-train the open_clip ``model`` in place on ``scenes`` (left in eval mode).

    Returns the engine's result (``history`` rows ``{"step", "loss", <term>...}``, ``seconds``).
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    unknown = set(terms) - set(LOSS_TERMS)
    if not terms or unknown:
        raise ValueError(f"terms: expected a non-empty subset of {LOSS_TERMS}, got {terms}")
    classes = load_class_lists("synthetic")
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    caption_tokens = tokenizer(scenes.captions)
    prior = predicate_log_prior(scenes, len(classes.predicate_classes))
    g = torch.Generator().manual_seed(seed)
    # no weight decay on gains, biases, embeddings and the temperature (open_clip's rule)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    params = decay + no_decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    pool = {"order": torch.empty(0, dtype=torch.long)}
    max_log_scale = math.log(100.0)

    def run_step(step: int) -> dict[str, float]:
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        if pool["order"].numel() < batch_size:
            pool["order"] = torch.cat([pool["order"], torch.randperm(len(scenes), generator=g)])
        idx, pool["order"] = pool["order"][:batch_size], pool["order"][batch_size:]
        parts = clip_losses(model, tokenizer, scenes, idx, caption_tokens, classes, g, terms, prior)
        loss = sum(parts.values())
        loss.backward()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    trainer = Trainer(run_step=run_step, optimizer=opt, parameters=params, total_steps=steps, ctx=DistContext(),
                      device=torch.device("cpu"), lr_at=lambda s: lr * warmup_cosine(s, steps, warmup),
                      grad_clip=1.0, hooks=[LossLog(log_every, log)] if log_every else [])
    model.train()
    try:
        return trainer.train()
    finally:
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        model.eval()


def write_clip(out_dir: str | Path, steps: int = 2000, seed: int = 0, num_scenes: int = 4000, batch_size: int = 32,
               lr: float = 1e-3, image_size: int = 128, eval_scenes: int = 200, threads: int | None = 1,
               terms: tuple[str, ...] = LOSS_TERMS, log_every: int = 50) -> dict:
    """Pre-train the embedded CLIP and write it into ``out_dir`` (replaced only on success): the architecture
    JSON and the open_clip checkpoint (``spade-tiny-clip.{json,safetensors}``, loadable with
    ``open_clip.create_model(arch, pretrained=<file>)``), ``training.json`` and ``MODEL_CARD.md`` with the
    held-out report (trained vs init). Returns the record written to ``training.json``."""
    from pipeline.clip_eval import evaluate_clip, format_report  # the report reads the written model back

    if threads:
        torch.set_num_threads(threads)
    if image_size != TINY_CLIP_CONFIG["vision_cfg"]["image_size"]:
        raise ValueError(f"image_size: the tiny CLIP's tower takes {TINY_CLIP_CONFIG['vision_cfg']['image_size']} px, "
                         f"got {image_size}")
    with atomic_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        scenes = make_clip_scenes(seed, SPLIT_TRAIN, num_scenes, image_size)
        t_data = time.perf_counter() - t0
        print(f"data: {num_scenes} scenes in {t_data:.0f}s")
        model = tiny_clip_model(seed)
        result = train_clip(model, scenes, steps=steps, lr=lr, batch_size=batch_size, seed=seed, terms=terms,
                            log_every=log_every)
        checkpoint = build_tiny_clip(tmp, seed=seed)  # config + init checkpoint, overwritten with the trained one
        save_clip_checkpoint(model, checkpoint, {"architecture": TINY_CLIP_NAME, "seed": seed, "steps": steps})
        report = evaluate_clip(tmp, seed=seed, num_scenes=eval_scenes)
        record = {
            "seed": seed, "steps": steps, "num_scenes": num_scenes, "batch_size": batch_size, "lr": lr,
            "image_size": image_size, "terms": list(terms), "threads": threads, "eval_scenes": eval_scenes,
            "data_seconds": round(t_data, 1), "train_seconds": round(result.seconds, 1),
            "loss_first50": mean_loss(result, first=50), "loss_last50": mean_loss(result, last=50),
            "config": TINY_CLIP_CONFIG, "parameters": sum(p.numel() for p in model.parameters()),
            "report": report,
        }  # fmt: skip
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "MODEL_CARD.md").write_text(model_card(record, format_report(report)))
    print(format_report(report))
    return record


def save_clip_checkpoint(model: nn.Module, path: Path, metadata: dict) -> None:
    """Write ``model``'s state dict in open_clip's checkpoint format (safetensors, one metadata key)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"spade": json.dumps(metadata, sort_keys=True)})


def model_card(r: dict, table: str) -> str:
    terms = ", ".join(r["terms"])
    return f"""# SPADE embedded CLIP (tiny open_clip, pre-trained on synthetic scenes)

An open_clip `CLIP` ({r['parameters'] / 1e6:.2f} M parameters; config `spade-tiny-clip.json`: ViT image tower
at {r['image_size']} px, text tower over open_clip's BPE tokenizer, the teacher's tokenizer) pre-trained from its
`torch.manual_seed({r['seed']})` initialisation (the `tiny-random` preset's weights). Loads with
`open_clip.create_model("spade-tiny-clip", pretrained="spade-tiny-clip.safetensors")` after registering the JSON
(`spade_core.calibration.clip.load_clip` does both), like real open_clip weights.

- Data: {r['num_scenes']} synthetic scenes of {r['image_size']} px from `SeedSequence([{r['seed']}, 4, i])`
  (disjoint from `prepare`'s streams 0/1 and the teacher's 2/3); every object class and predicate, base and
  novel, is named in them (the analogue of CLIP's internet captions).
- Losses ({terms}): scene <-> relation-prompt caption (symmetric InfoNCE), mask-pooled dense region <-> its
  class name, box crop <-> its class name, subject-object union (masks and box) <-> every predicate of the pair,
  logit-adjusted by the predicates' frequencies (the last three over the whole vocabulary;
  `pipeline/clip_training.py`).
- Training: {r['steps']} steps, batch {r['batch_size']} scenes, AdamW lr {r['lr']} (warm-up, cosine to 0.1 lr),
  seed {r['seed']}, {r['threads']} CPU thread(s); data {r['data_seconds']} s, training {r['train_seconds']} s.
  Loss (sum of the terms, mean of first / last 50 steps): {r['loss_first50']:.3f} -> {r['loss_last50']:.3f}.
- Reproduce (CPU): `spade train-clip <out> --steps {r['steps']} --seed {r['seed']} --num-scenes {r['num_scenes']}
  --batch-size {r['batch_size']} --lr {r['lr']} --threads {r['threads']}`.

## Held-out report ({r['eval_scenes']} scenes, stream 5; `spade clip-report`)

{table}
"""
