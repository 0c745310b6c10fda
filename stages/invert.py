"""Stage ``invert``: teacher noise latents and cross-attention maps for every calibration image.

The work is :mod:`pipeline.inversion` (DDIM / O-BELM inversion or the random-noise ablation, teacher maps for
the relation prompt of each image's ground-truth triplets). Output: ``artifacts/invert/teacher.zarr`` (see
``pipeline.stores``), written shard by shard (resumable, ``persist: true`` in dvc.yaml; rank r of W writes
shards r, r+W, ...), ``artifacts/invert_metrics.json`` (UNet calls, store size, reconstruction error, and how well
the stored maps localise the named objects: ``pipeline.map_localisation``) and ``artifacts/invert_run.json``
(throughput, process count, teacher identity).
"""

from __future__ import annotations

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.dist import DistContext, barrier, init_distributed, shutdown
from pipeline.inversion import calibration_records, inversion_metrics, open_store, process_shards
from pipeline.io import prepare_outputs, write_metrics
from pipeline.models import LoadedModels, load_models, resolve_device
from pipeline.params import ScopedParams
from pipeline.stores import InversionStore

PARAMS = ("data.split", "model.dtype", "model.device", "model.image_size", "invert")
RUN_TIMINGS = ("images_per_second_rank0", "world_size")
RUN_DEPENDENT = (*RUN_TIMINGS, "store_bytes_per_image")  # not in the store's manifest
RUN_FIGURES = (*RUN_TIMINGS, "teacher")  # invert_run.json, not the DVC metrics


def run(p: ScopedParams) -> None:
    # sweep leftovers, check writable
    prepare_outputs(paths.INVERT, paths.INVERT_STORE, paths.INVERT_METRICS, paths.INVERT_RUN)
    device = resolve_device(p.model.device)
    ctx = init_distributed(device)
    models = load_models(paths.MODELS, device=str(device), dtype=p.model.dtype)
    records, classes = calibration_records(), read_classes(paths.CLASSES_JSON)
    store = open_store(models, records, classes, p, ctx)
    todo = [s for s in store.shards_for_rank(ctx.rank, ctx.world_size) if not store.is_complete(s)]
    stats = process_shards(store, todo, records, classes, models, p, ctx)
    barrier(ctx)
    if ctx.is_main:
        finish(store, models, p, stats, ctx, records)
    shutdown(ctx)


def finish(
    store: InversionStore, models: LoadedModels, p: ScopedParams, stats: dict, ctx: DistContext, records: list
) -> None:
    """Rank 0, every shard written: the store's manifest and ``invert_metrics.json``."""
    metrics = inversion_metrics(store, models, p, stats, ctx.world_size, records)
    # the store is a cached DVC output: keep run-dependent figures (speed, process count) out of it, so two runs
    # that write the same arrays give the same artifact hash (and its own size, which the manifest would change);
    # they live in invert_metrics.json / invert_run.json only
    store.write_manifest({k: v for k, v in metrics.items() if k not in RUN_DEPENDENT})
    write_metrics(metrics, RUN_FIGURES, paths.INVERT_METRICS, paths.INVERT_RUN)
    raw = ", ".join(f"{name} {n / 1024:.1f} KiB" for name, n in metrics["raw_bytes_per_image"].items())
    size = metrics["store_bytes_per_image"]
    print(f"invert: {metrics['num_images']} images -> {paths.INVERT_STORE}, "
          f"{'?' if size is None else f'{size / 1024:.1f}'} KiB/image on disk (raw: {raw}), "
          f"{metrics['unet_calls_total']} UNet calls")


if __name__ == "__main__":
    from pipeline.runner import stage_main

    stage_main("invert", PARAMS, run)
