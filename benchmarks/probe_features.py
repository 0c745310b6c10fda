"""How much the trained model (PSG masks or VG boxes) relies on its backbone features: the test split evaluated
with them intact, zeroed, shuffled across the images of a batch, or replaced by noise of their own per-channel
statistics; with the share of ground-truth segments (VG: boxes) the model finds (a predicted region of IoU >= 0.5,
any class / the right class), to tell segmentation from relation errors, and the relation queries eq. 13 selects
(per image, and the share of GT relations whose two segments some query pairs: the recall the pair selection
leaves possible).

Run in a workspace where ``train`` has run (``dvc repro`` or an experiment's temp folder):

    python benchmarks/probe_features.py [--threads 1] [--json probe.json]

The backbone features are what ``model.backbone`` selects (the calibrated UNet's block outputs for SPADE, the
dense CLIP map for the VLM-only baseline); the dense CLIP map that the pooled classifier reads is left as it is,
so "zeroed" keeps the pooled branch and shows what the model makes of the backbone alone. Metrics are the
evaluate stage's (closed set and the spatial DR / NDR split, R@50 / mR@50 in %), with the classification
sources of ``params.yaml``'s evaluate section.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import torch

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.datasets.index import read_index
from pipeline.evaluation import compute_metrics, load_spatial_predicates
from pipeline.images import load_images
from pipeline.models import load_models
from pipeline.params import load_params
from pipeline.psg_data import ground_truth, is_box_ground_truth
from pipeline.psg_model import inference_config, load_trained
from spade_core.eval.vg import box_iou_plus1
from spade_core.psg.postprocess import class_scores

Perturb = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return mean + std * torch.randn(x.shape, generator=gen)


VARIANTS: dict[str, Perturb | None] = {
    "as trained": None,
    "backbone features zeroed": lambda x, gen: torch.zeros_like(x),
    "backbone features of another image": lambda x, gen: torch.roll(x, 1, dims=0),
    "backbone features -> noise (same channel mean/std)": _noise,
}


def queried_pairs(out: dict, b: int, keep: torch.Tensor) -> np.ndarray:
    """The relation queries of image ``b`` as pairs of predicted-segment indices ``[P, 2]`` (``keep``: the
    queries that became segments, as in ``postprocess``)."""
    segment = torch.cumsum(keep.long(), 0) - 1
    pairs = out["pairs"][b][out["pair_valid"][b]]
    pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]]
    return segment[pairs].cpu().numpy().reshape(-1, 2)


def region_iou(gt: dict, pred: dict) -> torch.Tensor:
    """IoU ``[S, N]`` of the GT regions with the predicted ones: masks (PSG), or boxes with the evaluator's
    +1-pixel convention (VG)."""
    if is_box_ground_truth(gt):
        return torch.as_tensor(box_iou_plus1(gt["boxes"], pred["boxes"]))
    g = torch.as_tensor(gt["masks"]).flatten(1).float()
    q = torch.as_tensor(pred["masks"]).flatten(1).float()
    inter = g @ q.T
    return inter / (g.sum(1, keepdim=True) + q.sum(1)[None] - inter).clamp(min=1)


def match_stats(gts: list[dict], preds: list[dict], iou_thr: float = 0.5) -> dict[str, float]:
    """Segmentation (or box detection) and pair selection against the GT, in %: GT segments covered by a
    predicted mask (box) with IoU >= ``iou_thr`` (any class / the GT's class); relation queries per image; GT
    relations whose subject and object are both covered by the two segments of some relation query, per image and
    averaged over the images as R@K is (the recall eq. 13 leaves possible, whatever the predicate)."""
    seg_any = seg_label = segs = rel_hit = rels = num_pairs = 0
    for gt, pred in zip(gts, preds):
        good = region_iou(gt, pred) >= iou_thr  # [S, N]
        same = torch.as_tensor(gt["labels"])[:, None] == torch.as_tensor(pred["labels"])[None]
        segs, num_pairs = segs + good.shape[0], num_pairs + len(pred["pairs"])
        seg_any += int(good.any(1).sum())
        seg_label += int((good & same).any(1).sum())
        if len(gt["relations"]):  # per image, then averaged over the images (as R@K)
            hits = [any(good[s, i] and good[o, j] for i, j in pred["pairs"].tolist())
                    for s, o, _ in gt["relations"].tolist()]
            rel_hit, rels = rel_hit + sum(hits) / len(hits), rels + 1
    return {"segments found": 100 * seg_any / max(segs, 1), "... with their class": 100 * seg_label / max(segs, 1),
            "pairs queried / image": num_pairs / max(len(gts), 1), "GT relations queried": 100 * rel_hit / max(rels, 1)}


def probe(batch_size: int = 8, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{variant: {metric: value in %}}`` on the test split of the current workspace."""
    params = load_params()
    models = load_models(paths.MODELS, device="cpu", dtype="float32")
    trained = load_trained(models, inference_config(params.evaluate))
    classes = read_classes(paths.CLASSES_JSON)
    obj_text, pred_text = trained.vocabulary_embeddings(list(classes.object_names), list(classes.predicate_names))
    records = read_index(paths.index_path("test"))
    size = trained.config["image_size"]
    cached = []  # the features of every batch, computed once
    for b in range(0, len(records), batch_size):
        batch = records[b : b + batch_size]
        cached.append((batch, *trained.features(load_images(batch, size))))
    gts = [ground_truth(r) for r in records]
    common = {
        "num_predicates": len(classes.predicate_names),
        "predicate_names": list(classes.predicate_names),
        "spatial_predicates": load_spatial_predicates(params.data.source, list(classes.predicate_names)),
        "image_widths": [r.width for r in records],
        "ks": tuple(params.evaluate.ks),
        "iou_thr": params.evaluate.iou_thr,
        "skip_empty_predictions": params.evaluate.skip_empty_predictions,
    }
    table = {}
    for name, perturb in VARIANTS.items():
        gen = torch.Generator().manual_seed(seed)
        preds = []
        with torch.no_grad():
            for batch, feats, dense in cached:
                feats = [f if perturb is None else perturb(f, gen) for f in feats]
                out = trained.model(feats, dense, obj_text, pred_text)
                sizes = [(r.height, r.width) for r in batch]
                batch_preds = trained.model.predict(out, sizes, max_triplets=params.evaluate.max_triplets)
                inf = trained.model.config.inference
                obj = class_scores(out["class_logits"], out.get("pooled_obj_logits"), inf.alpha,
                                   inf.use_diffusion_logits, inf.use_pooled_logits)
                keep = obj.max(-1).values > 0.0  # postprocess's rule at its default score_threshold
                for b, p in enumerate(batch_preds):
                    p["pairs"] = queried_pairs(out, b, keep[b])
                preds += batch_preds
        pred_images = [{k: np.asarray(v.cpu() if torch.is_tensor(v) else v) for k, v in p.items()} for p in preds]
        _, summary = compute_metrics(gts, pred_images, **common)
        table[name] = match_stats(gts, pred_images) | {
            f"{label} {m}": 100 * summary[setting][m]
            for setting, label in (("closed", "closed"), ("spatial_dr", "DR"), ("spatial_ndr", "NDR"))
            for m in ("R@50", "mR@50")
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = probe(args.batch_size)
    names = list(next(iter(table.values())))
    print("| variant | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for variant, row in table.items():
        print(f"| {variant} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=2)


if __name__ == "__main__":
    main()
