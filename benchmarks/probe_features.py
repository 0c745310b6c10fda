"""How much the trained PSG model relies on its backbone features: the test split evaluated with them intact,
zeroed, shuffled across the images of a batch, or replaced by noise of their own per-channel statistics; with
the share of ground-truth segments the model finds (a predicted mask of IoU >= 0.5, any class / the right class),
to tell segmentation from relation errors.

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

import torch

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.datasets.index import read_index
from pipeline.evaluation import compute_metrics, load_spatial_predicates
from pipeline.images import load_images
from pipeline.models import load_models
from pipeline.params import load_params
from pipeline.psg_data import ground_truth
from pipeline.psg_model import inference_config, load_trained

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


def segment_recall(gts: list[dict], preds: list[dict], iou_thr: float = 0.5) -> tuple[float, float]:
    """Share of GT segments covered by a predicted mask with IoU >= ``iou_thr``: (any label, the GT's label)."""
    hit_any = hit_label = total = 0
    for gt, pred in zip(gts, preds):
        g = torch.as_tensor(gt["masks"]).flatten(1).float()
        total += g.shape[0]
        if pred["masks"].shape[0] == 0 or g.shape[0] == 0:
            continue
        q = torch.as_tensor(pred["masks"]).flatten(1).float()
        inter = g @ q.T
        iou = inter / (g.sum(1, keepdim=True) + q.sum(1)[None] - inter).clamp(min=1)
        good = iou >= iou_thr
        same = torch.as_tensor(gt["labels"])[:, None] == torch.as_tensor(pred["labels"])[None]
        hit_any += int(good.any(1).sum())
        hit_label += int((good & same).any(1).sum())
    return 100 * hit_any / max(total, 1), 100 * hit_label / max(total, 1)


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
                preds += trained.model.predict(out, sizes, max_triplets=params.evaluate.max_triplets)
        pred_images = [{k: p[k].cpu().numpy() for k in ("masks", "labels", "triplets")} for p in preds]
        _, summary = compute_metrics(gts, pred_images, **common)
        seg_any, seg_label = segment_recall(gts, pred_images)
        table[name] = {"segments found": seg_any, "... with their class": seg_label} | {
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
