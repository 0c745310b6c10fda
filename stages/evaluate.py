"""Stage ``evaluate``: SGDET metrics of the trained model on the test split.

Runs the model on every test image (batched) with the text embeddings of the *full* vocabulary, then
evaluates with the exact PSG protocol (``spade_core.eval``; panoptic data) or the Scene-Graph-Benchmark /
OvSGTR protocol (``spade_core.eval.vg``; box data, VG): closed set, the open-vocabulary settings (when the split
has novel classes) and the spatial analysis (DR / NDR), plus a chance baseline (random triplets over the
predicted masks or boxes; :mod:`pipeline.evaluation`). Writes ``artifacts/evaluate/{triplets.parquet,
metrics.parquet,chance.json,per_predicate_recall.png,visualisations/}``, ``artifacts/metrics.json`` (DVC metrics) and
``artifacts/per_predicate_recall.csv`` (DVC plots).
"""

from __future__ import annotations

from tqdm import tqdm

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.datasets.index import read_index
from pipeline.datasets.splits import read_split_file
from pipeline.evaluation import chance_baseline, compute_metrics, load_spatial_predicates, write_outputs
from pipeline.images import load_images
from pipeline.io import atomic_dir, prepare_outputs
from pipeline.models import load_models, resolve_device
from pipeline.params import ScopedParams
from pipeline.psg_data import ground_truth
from pipeline.psg_model import inference_config, load_trained
from pipeline.tables import TRIPLETS_SCHEMA, concat_columns, triplet_rows, write_table
from pipeline.visualise import render_comparison, save_png

PARAMS = ("data.source", "data.split", "model.device", "model.dtype", "evaluate")


def run(p: ScopedParams) -> None:
    prepare_outputs(paths.EVALUATE, paths.EVALUATE_METRICS, paths.EVALUATE_PLOTS)  # sweep leftovers, check writable
    ev = p.evaluate
    device = resolve_device(p.model.device)
    models = load_models(paths.MODELS, device=str(device), dtype=p.model.dtype)
    trained = load_trained(models, inference_config(ev))
    classes = read_classes(paths.CLASSES_JSON)
    split = read_split_file(paths.SPLIT_JSON)
    object_names, predicate_names = list(classes.object_names), list(classes.predicate_names)
    obj_text, pred_text = trained.vocabulary_embeddings(object_names, predicate_names)
    records = read_index(paths.index_path("test"))
    size = trained.config["image_size"]

    preds: list[dict] = []
    for b in tqdm(range(0, len(records), ev.batch_size), desc="evaluate", unit="batch"):
        batch = records[b : b + ev.batch_size]
        images = load_images(batch, size)
        preds += trained.predict(images, [(r.height, r.width) for r in batch], obj_text, pred_text, ev.max_triplets)
    gts = [ground_truth(r) for r in records]
    region = trained.region_key
    pred_images = [{region: q[region], "labels": q["labels"], "triplets": q["triplets"]} for q in preds]
    common = {
        "num_predicates": len(predicate_names),
        "predicate_names": predicate_names,
        "novel_predicates": sorted(split.novel_predicates),
        "novel_objects": sorted(split.novel_objects),
        "spatial_predicates": load_spatial_predicates(p.data.source, predicate_names),
        "image_widths": [r.width for r in records],
        "ks": tuple(ev.ks),
        "iou_thr": ev.iou_thr,
        "skip_empty_predictions": ev.skip_empty_predictions,
    }
    rows, summary = compute_metrics(gts, pred_images, **common)
    chance = chance_baseline(gts, pred_images, rng_seed=0, max_triplets=ev.max_triplets, num_draws=ev.chance_draws,
                            **common)

    with atomic_dir(paths.EVALUATE) as tmp:
        (tmp / "visualisations").mkdir()
        columns = concat_columns(
            [
                triplet_rows(r.image_id, q, object_names, predicate_names, (r.height, r.width))
                for r, q in zip(records, pred_images)
            ],
            TRIPLETS_SCHEMA,
        )
        write_table(columns, TRIPLETS_SCHEMA, tmp / "triplets.parquet")
        for r, q, g in list(zip(records, pred_images, gts))[: ev.num_visualisations]:
            picture = render_comparison(r.load_image(), g, q, object_names, predicate_names, title=r.image_id)
            save_png(picture, tmp / "visualisations" / f"{r.image_id}.png")
        write_outputs(tmp, rows, summary, None, paths.EVALUATE_METRICS, paths.EVALUATE_PLOTS, chance=chance,
                      protocol="vg" if region == "boxes" else "psg")
    closed = summary["closed"]
    print(
        "evaluate: "
        + ", ".join(f"{k}={v:.3f}" for k, v in closed.items() if "@" in k)
        + f" | chance R@50={chance['closed'].get('R@50', float('nan')):.3f}"
    )


if __name__ == "__main__":
    from pipeline.runner import stage_main

    stage_main("evaluate", PARAMS, run)
