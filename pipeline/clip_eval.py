"""What the embedded CLIP knows, on held-out synthetic scenes (``spade clip-report``, and the model card).

Scores of a frozen :class:`~spade_core.calibration.clip.ClipModels` on scenes of stream 5
(:func:`pipeline.clip_training.make_clip_scenes`), against text embeddings of the *whole* vocabularies
(16 object names, 10 predicates; prompt ensembles of ``spade_core.calibration.clip``):

* ``crop_accuracy``: every segment cropped to its box (10 % margin) and encoded whole; top-1 over the 16
  names, reported for the open-vocabulary split's base and novel classes (``ovdr`` novel objects) and all;
* ``region_accuracy``: the same with the segment's mask-pooled dense feature (what the PSG model's pooled
  second opinion reads, paper eq. 18);
* ``retrieval_r1``: image -> caption retrieval among all held-out scenes (a scene's own relation prompt ranked
  first);
* ``predicate_accuracy``: the subject-object union region's mask-pooled feature against the 10 predicates; a
  relation counts as a hit when its predicate is among the top-n predictions, n = the number of predicates
  annotated on that pair (a pair can be "left of" and "beside" at once). Reported for base and novel predicates
  (``ovr`` split), for distant and non-distant pairs (box centres more than W/3 apart, paper Table 4), and for
  the directional predicates (left of / right of / above / below), which a union region cannot tell apart from
  their mirror images: a symmetric pooling region is the limit of this branch, which SPADE's relation decoder
  is there to overcome;
* ``predicate_box_accuracy``: the same, base and novel, pooled inside the union *box* (what a box model pools on
  VG).

``init`` holds the same figures for the model at initialisation (the ``tiny-random`` preset's CLIP).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.clip_training import (
    SPLIT_HELDOUT,
    ClipScenes,
    crop_boxes,
    make_clip_scenes,
    padded_masks,
    union_box_regions,
    union_masks,
)
from pipeline.datasets.classes import load_class_lists
from pipeline.datasets.splits import load_split
from spade_core.calibration.clip import (
    OBJECT_TEMPLATES,
    PREDICATE_TEMPLATES,
    TINY_CLIP_NAME,
    ClipModels,
    build_tiny_clip,
    encode_text,
    image_features,
    load_clip,
)
from spade_core.eval.spatial import distant_pair_mask
from spade_core.psg.classifier import mask_pool

DIRECTIONAL = ("left of", "right of", "above", "below")


def _rate(hits: list[bool]) -> float | None:
    return float(sum(hits) / len(hits)) if hits else None


@torch.no_grad()
def clip_scores(clip: ClipModels, scenes: ClipScenes, batch_size: int = 50) -> dict[str, Any]:
    """The figures of the module docstring for one model."""
    classes = load_class_lists("synthetic")
    novel_obj = load_split("synthetic", "ovdr").novel_objects
    novel_pred = load_split("synthetic", "ovr").novel_predicates
    directional = {classes.predicate_classes.index(n) for n in DIRECTIONAL}
    obj_text = encode_text(clip, classes.object_names, OBJECT_TEMPLATES)
    pred_text = encode_text(clip, classes.predicate_classes, PREDICATE_TEMPLATES)
    crop, region = {"base": [], "novel": []}, {"base": [], "novel": []}
    pred = {k: [] for k in ("base", "novel", "dr", "ndr", "directional", "other")}
    pred_box = {"base": [], "novel": []}
    image_emb, caption_emb = [], []
    for start in range(0, len(scenes), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(scenes)))
        images01 = scenes.images[idx].float() / 255.0
        pooled, dense = image_features(clip.model, clip.preprocess(images01))
        image_emb.append(pooled)
        caption_emb.append(clip.model.encode_text(clip.tokenizer([scenes.captions[i] for i in idx.tolist()])))
        masks, _ = padded_masks(scenes, idx)
        region_pred = (mask_pool(dense, masks) @ obj_text.t()).argmax(-1)
        unions, _, rels = union_masks(scenes, idx, None)
        pred_rank = (mask_pool(dense, unions) @ pred_text.t()).argsort(-1, descending=True)
        box_rank = (mask_pool(dense, union_box_regions(scenes, idx, rels)) @ pred_text.t()).argsort(-1, descending=True)
        for b, i in enumerate(idx.tolist()):
            lab = scenes.labels[i]
            crops = crop_boxes(images01[b : b + 1].expand(len(lab), -1, -1, -1).contiguous(), scenes.boxes[i],
                               clip.image_size)
            crop_pred = (clip.model.encode_image(clip.preprocess(crops)) @ obj_text.t()).argmax(-1)
            for k, c in enumerate(lab.tolist()):
                group = "novel" if c in novel_obj else "base"
                crop[group].append(int(crop_pred[k]) == c)
                region[group].append(int(region_pred[b, k]) == c)
            rel = rels[b]
            if not len(rel):
                continue
            distant = distant_pair_mask(rel.numpy(), scenes.boxes[i].numpy(), float(scenes.images.shape[-1]))
            pair_count: dict[tuple[int, int], int] = {}
            for s, o, _ in rel.tolist():
                pair_count[(s, o)] = pair_count.get((s, o), 0) + 1
            for r, (s, o, p) in enumerate(rel.tolist()):
                hit = p in pred_rank[b, r, : pair_count[(s, o)]].tolist()
                pred["novel" if p in novel_pred else "base"].append(hit)
                pred_box["novel" if p in novel_pred else "base"].append(
                    p in box_rank[b, r, : pair_count[(s, o)]].tolist())
                pred["dr" if distant[r] else "ndr"].append(hit)
                pred["directional" if p in directional else "other"].append(hit)
    sims = torch.nn.functional.normalize(torch.cat(image_emb), dim=-1) @ torch.nn.functional.normalize(
        torch.cat(caption_emb), dim=-1).t()
    retrieval = float((sims.argmax(-1) == torch.arange(len(sims))).float().mean())
    all_pred = pred["base"] + pred["novel"]
    return {
        "crop_accuracy": {"base": _rate(crop["base"]), "novel": _rate(crop["novel"]),
                          "all": _rate(crop["base"] + crop["novel"]),
                          "n_base": len(crop["base"]), "n_novel": len(crop["novel"])},
        "region_accuracy": {"base": _rate(region["base"]), "novel": _rate(region["novel"]),
                            "all": _rate(region["base"] + region["novel"])},
        "retrieval_r1": retrieval,
        "predicate_accuracy": {**{k: _rate(v) for k, v in pred.items()}, "all": _rate(all_pred),
                               "n": len(all_pred), "n_novel": len(pred["novel"]), "n_dr": len(pred["dr"])},
        "predicate_box_accuracy": {k: _rate(v) for k, v in pred_box.items()},
    }  # fmt: skip


def chance_levels(num_scenes: int) -> dict[str, float]:
    """Top-1 chance of each figure: 1/16 objects, 1/N retrieval, ~1/10 predicates (more for multi-label pairs)."""
    classes = load_class_lists("synthetic")
    return {"object": 1 / len(classes.object_names), "retrieval": 1 / num_scenes,
            "predicate": 1 / len(classes.predicate_classes)}


def load_weights(weights_dir: str | Path) -> ClipModels:
    """The CLIP in ``weights_dir`` (``spade-tiny-clip.{json,safetensors}``), through :func:`load_clip`."""
    weights = Path(weights_dir)
    arch, ckpt = weights / f"{TINY_CLIP_NAME}.json", weights / f"{TINY_CLIP_NAME}.safetensors"
    for f in (arch, ckpt):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (train it with `spade train-clip {weights}`)")
    return load_clip(arch, ckpt)


def evaluate_clip(weights_dir: str | Path, seed: int | None = None, num_scenes: int = 200) -> dict[str, Any]:
    """Scores of the CLIP in ``weights_dir`` and of the same architecture at initialisation (seed from
    ``training.json`` unless given) on ``num_scenes`` held-out scenes."""
    weights = Path(weights_dir)
    info = weights / "training.json"
    record = json.loads(info.read_text()) if info.is_file() else {}
    seed = record.get("seed", 0) if seed is None else seed
    trained = load_weights(weights)
    scenes = make_clip_scenes(seed, SPLIT_HELDOUT, num_scenes, trained.image_size[0])
    with tempfile.TemporaryDirectory(prefix="spade-clip-init-") as tmp:
        build_tiny_clip(tmp, seed=seed)
        init = load_weights(tmp)
    result = clip_scores(trained, scenes)
    result["init"] = clip_scores(init, scenes)
    result["chance"] = chance_levels(num_scenes)
    result["eval_scenes"] = num_scenes
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


REPORT_ROWS = (
    ("crop accuracy, base objects", ("crop_accuracy", "base"), "object"),
    ("crop accuracy, novel objects", ("crop_accuracy", "novel"), "object"),
    ("mask-pooled accuracy, base objects", ("region_accuracy", "base"), "object"),
    ("mask-pooled accuracy, novel objects", ("region_accuracy", "novel"), "object"),
    ("image -> caption R@1", ("retrieval_r1",), "retrieval"),
    ("predicate (union pooling), base", ("predicate_accuracy", "base"), "predicate"),
    ("predicate (union pooling), novel", ("predicate_accuracy", "novel"), "predicate"),
    ("predicate (union box pooling), base", ("predicate_box_accuracy", "base"), "predicate"),
    ("predicate (union box pooling), novel", ("predicate_box_accuracy", "novel"), "predicate"),
    ("predicate, distant pairs (DR)", ("predicate_accuracy", "dr"), "predicate"),
    ("predicate, non-distant pairs (NDR)", ("predicate_accuracy", "ndr"), "predicate"),
    ("predicate, directional (left/right/above/below)", ("predicate_accuracy", "directional"), "predicate"),
    ("predicate, other", ("predicate_accuracy", "other"), "predicate"),
)


def _get(tree: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def format_report(report: dict[str, Any]) -> str:
    """Markdown table (percent): trained, init, top-1 chance."""
    lines = ["| measure | trained | init | chance |", "|---|---|---|---|"]
    for label, keys, chance in REPORT_ROWS:
        lines.append(f"| {label} | {_pct(_get(report, keys))} | {_pct(_get(report['init'], keys))} | "
                     f"{_pct(report['chance'][chance])} |")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Horizontal bar chart of the table: trained vs init, chance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r[0] for r in REPORT_ROWS]
    trained = [100 * (_get(report, r[1]) or 0) for r in REPORT_ROWS]
    init = [100 * (_get(report["init"], r[1]) or 0) for r in REPORT_ROWS]
    chance = [100 * report["chance"][r[2]] for r in REPORT_ROWS]
    y = range(len(labels))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1))
    ax.barh([v + 0.2 for v in y], trained, height=0.4, label="trained")
    ax.barh([v - 0.2 for v in y], init, height=0.4, label="init")
    ax.scatter(chance, list(y), marker="|", s=200, color="k", label="chance", zorder=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.set_title(f"Embedded CLIP on {report['eval_scenes']} held-out synthetic scenes")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
