"""Stage ``invert``: teacher noise latents and cross-attention maps for every calibration image.

For each training image usable for calibration under the split in use: VAE-encode, invert to noise with
DDIM or O-BELM (``invert.noise: random`` draws Gaussian noise with a per-image seed instead: the paper's
"w/o inversion" ablation), and record the teacher's cross-attention maps at the final denoising step for the
relation prompt built from the image's ground-truth triplets. With BELM the maps are taken during inversion
(N UNet calls per image instead of 2N - 1; see ``spade_core.diffusion.inversion``).

Output: ``artifacts/invert/teacher.zarr`` (see ``pipeline.stores``), written shard by shard (resumable,
``persist: true`` in dvc.yaml; rank r of W writes shards r, r+W, ...), and ``artifacts/invert_metrics.json``
(throughput, reconstruction error, and how well the stored maps localise the named objects:
``pipeline.map_localisation``).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.datasets.classes import ClassLists
from pipeline.datasets.index import IndexRecord, read_index
from pipeline.dist import DistContext, barrier, init_distributed, shutdown
from pipeline.images import to_tensor, vae_range
from pipeline.map_localisation import stored_map_localisation
from pipeline.models import LoadedModels, load_models
from pipeline.params import ScopedParams
from pipeline.stores import InversionStore, StoreGeometry
from spade_core.diffusion import AttentionCapture, reconstruction_error, sample, teacher_maps
from spade_core.diffusion.models import encode_images, encode_token_ids
from spade_core.diffusion.prompts import build_relation_prompt

PARAMS = ("data.split", "model.dtype", "model.device", "model.image_size", "invert")

CODE_FILES = ("stages/invert.py", "spade_core/diffusion")
LOCALISATION_IMAGES = 64  # images whose stored maps are scored against their masks in invert_metrics.json


def code_version(root: Path = paths.REPO_ROOT) -> str:
    """Hash of the code that determines the store's content (a changed sampler must not reuse old shards)."""
    h = hashlib.sha256()
    for entry in CODE_FILES:
        p = root / entry
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def calibration_records() -> list[IndexRecord]:
    records = [r for r in read_index(paths.index_path("train")) if r.usable_for_calibration]
    if not records:
        raise RuntimeError(f"{paths.index_path('train')}: no training image is usable for calibration")
    return records


def load_classes() -> ClassLists:
    data = json.loads(paths.CLASSES_JSON.read_text())
    return ClassLists(
        thing_classes=tuple(data["thing_classes"]),
        stuff_classes=tuple(data["stuff_classes"]),
        predicate_classes=tuple(data["predicate_classes"]),
        stuff_names=tuple(data["object_names"][len(data["thing_classes"]) :]),
    )


def relation_triplets(record: IndexRecord, classes: ClassLists) -> list[tuple[str, str, str]]:
    names, preds = classes.object_names, classes.predicate_classes
    cats = record.category_ids
    return [(names[cats[s]], preds[p], names[cats[o]]) for s, o, p in record.relations]


def image_seed(seed: int, image_id: str) -> int:
    """Per-image seed: results never depend on the number of processes or the batch composition."""
    return (seed * 1_000_003 + zlib.crc32(image_id.encode())) % (2**63)


def random_noise(seed: int, image_id: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(image_seed(seed, image_id))
    return torch.randn(shape, generator=g)


def geometry_for(models: LoadedModels, num_images: int, p: ScopedParams) -> StoreGeometry:
    vae, unet = models.diffusion.vae, models.diffusion.unet
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = p.model.image_size
    if size % factor:
        raise ValueError(f"model.image_size={size} is not a multiple of the VAE downsampling factor {factor}")
    h = w = size // factor
    res = p.invert.attn_resolution or h
    return StoreGeometry(
        num_images=num_images,
        latent_shape=(unet.config.in_channels, h, w),
        num_tokens=models.diffusion.tokenizer.model_max_length,
        attn_shape=(res, res),
        shard_size=p.invert.shard_size,
    )


def store_settings(models: LoadedModels, p: ScopedParams) -> dict:
    inv = p.invert
    return {
        "method": inv.method,
        "num_steps": inv.num_steps,
        "noise": inv.noise,
        "regenerate": inv.regenerate,
        "seed": inv.seed,
        "split": p.data.split,
        "image_size": p.model.image_size,
        "dtype": p.model.dtype,
        "teacher": models.teacher_identity,
        "code": code_version(),
    }


@torch.no_grad()
def invert_batch(
    models: LoadedModels,
    capture: AttentionCapture,
    images: torch.Tensor,
    token_ids: torch.Tensor,
    image_ids: list[str],
    p: ScopedParams,
    measure: bool,
) -> dict[str, np.ndarray]:
    """One batch: latents [B,2,C,h,w], maps [B,T,ha,wa], reconstruction errors [B] (NaN when not measured)."""
    d, inv = models.diffusion, p.invert
    unet = d.unet
    device = next(unet.parameters()).device
    x0 = encode_images(d.vae, vae_range(images).to(device))
    cond = encode_token_ids(d.text_encoder, token_ids.to(device))
    size = (inv.attn_resolution,) * 2 if inv.attn_resolution else tuple(x0.shape[-2:])
    recon = np.full(len(images), np.nan, dtype=np.float32)
    if inv.noise == "inverted":
        out = teacher_maps(
            unet,
            x0,
            cond,
            method=inv.method,
            num_steps=inv.num_steps,
            capture=capture,
            regenerate=inv.regenerate,
            size=size,
            scheduler_config=d.scheduler_config,
        )
        noise, maps = out.noise, out.maps
        if measure:
            rec = sample(
                unet, noise, cond, method=inv.method, num_steps=inv.num_steps, scheduler_config=d.scheduler_config
            )
            recon = reconstruction_error(x0, rec, per_sample=True).float().cpu().numpy()
    else:  # "w/o inversion": Gaussian noise, the teacher denoises it with the prompt
        noise = torch.stack([random_noise(inv.seed, i, tuple(x0.shape[1:])) for i in image_ids]).to(device)
        capture.clear()
        sample(
            unet,
            noise,
            cond,
            method=inv.method,
            num_steps=inv.num_steps,
            capture=capture,
            scheduler_config=d.scheduler_config,
        )
        maps = capture.maps(size)
    capture.clear()
    pair = noise if noise.ndim == 5 else torch.stack([noise, noise], dim=1)
    return {"latents": pair.float().cpu().numpy(), "attn": maps.float().cpu().numpy(), "recon_error": recon}


def run(p: ScopedParams) -> None:
    from pipeline.models import resolve_device

    device = resolve_device(p.model.device)
    ctx = init_distributed(device)
    models = load_models(paths.MODELS, device=str(device), dtype=p.model.dtype)
    records, classes = calibration_records(), load_classes()
    ids = [r.image_id for r in records]
    geometry, settings = geometry_for(models, len(records), p), store_settings(models, p)
    paths.INVERT.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        InversionStore.create_or_open(
            paths.INVERT_STORE, geometry, ids, settings, replace_mismatched=p.invert.on_mismatch == "replace"
        )
    barrier(ctx)
    store = InversionStore.create_or_open(paths.INVERT_STORE, geometry, ids, settings)
    todo = [s for s in store.shards_for_rank(ctx.rank, ctx.world_size) if not store.is_complete(s)]
    stats = process_shards(store, todo, records, classes, models, p, ctx)
    barrier(ctx)
    if ctx.is_main:
        finish(store, models, p, stats, ctx, records)
    shutdown(ctx)


def process_shards(store, todo, records, classes, models, p, ctx: DistContext) -> dict:
    tok = models.diffusion.tokenizer
    capture = AttentionCapture(models.diffusion.unet)
    bs = p.invert.batch_size
    total = sum(np.subtract(*store.geometry.shard_range(s)[::-1]) for s in todo)
    bar = tqdm(total=total, desc=f"invert[rank {ctx.rank}]", unit="img", disable=not ctx.is_main)
    t0, done, kept = time.perf_counter(), 0, []
    for shard in todo:
        start, stop = store.geometry.shard_range(shard)
        parts: dict[str, list] = {
            k: [] for k in ("latents", "attn", "recon_error", "tokens", "roles", "triplet_index", "lengths")
        }
        for b in range(start, stop, bs):
            batch = records[b : min(b + bs, stop)]
            prompts = [build_relation_prompt(relation_triplets(r, classes), tok) for r in batch]
            images = torch.stack([to_tensor(r.load_image(), p.model.image_size) for r in batch])
            token_ids = torch.stack([q.token_ids for q in prompts])
            out = invert_batch(models, capture, images, token_ids, [r.image_id for r in batch], p, measure=b == start)
            for k, v in out.items():
                parts[k].append(v)
            parts["tokens"].append(token_ids.numpy())
            parts["roles"].append(torch.stack([q.role for q in prompts]).numpy())
            parts["triplet_index"].append(torch.stack([q.triplet_index for q in prompts]).numpy())
            parts["lengths"].append(np.array([q.length for q in prompts]))
            kept += [q.num_triplets_kept / max(1, len(r.relations)) for q, r in zip(prompts, batch)]
            done += len(batch)
            bar.update(len(batch))
            bar.set_postfix(img_s=f"{done / (time.perf_counter() - t0):.2f}")
        store.write_shard(shard, {k: np.concatenate(v) for k, v in parts.items()})
    bar.close()
    capture.remove()
    return {"images": done, "seconds": time.perf_counter() - t0, "triplets_kept": kept}


def finish(
    store: InversionStore, models: LoadedModels, p: ScopedParams, stats: dict, ctx: DistContext, records: list
) -> None:
    inv = p.invert
    calls = {
        ("belm", False): inv.num_steps,
        ("ddim", False): inv.num_steps + 1,
        ("belm", True): 2 * inv.num_steps - 1,
        ("ddim", True): 2 * inv.num_steps,
    }[(inv.method, inv.regenerate)]
    if inv.noise == "random":
        calls = inv.num_steps
    recon = store.group["recon_error"][:]
    measured = recon[~np.isnan(recon)]
    metrics = {
        "num_images": store.geometry.num_images,
        "method": inv.method,
        "num_steps": inv.num_steps,
        "noise": inv.noise,
        "unet_calls_per_image": calls,
        "images_per_second_rank0": round(stats["images"] / stats["seconds"], 3) if stats["images"] else None,
        "world_size": ctx.world_size,
        "reconstruction_error_mean": float(measured.mean()) if len(measured) else None,
        "reconstruction_error_max": float(measured.max()) if len(measured) else None,
        "teacher": models.teacher_identity,
        # do the stored maps point at the named objects? (first images; `chance`: a random argmax)
        "localisation": stored_map_localisation(store, records, LOCALISATION_IMAGES),
    }
    store.write_manifest(metrics)
    tmp = paths.INVERT_METRICS.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(paths.INVERT_METRICS)
    print(f"invert: {metrics['num_images']} images -> {paths.INVERT_STORE}")


if __name__ == "__main__":
    from stages.cli import run_stage_main

    run_stage_main("invert")
