"""The ``invert`` stage's work: teacher noise latents and cross-attention maps for every calibration image.

For each training image usable for calibration under the split in use: VAE-encode, invert to noise with
DDIM or O-BELM (``invert.noise: random`` draws Gaussian noise with a per-image seed instead: the paper's
"w/o inversion" ablation), and record the teacher's cross-attention maps at the final denoising step for the
relation prompt built from the image's ground-truth triplets. With BELM the maps are taken during inversion
(N UNet calls per image instead of 2N - 1; see ``spade_core.diffusion.inversion``).

The store (:class:`pipeline.stores.InversionStore`) is written shard by shard; rank r of W writes shards
r, r+W, ..., so a run resumes by skipping complete shards. :func:`calibration_records` is the store's row
order, shared by every reader of the store.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.datasets.classes import ClassLists
from pipeline.datasets.index import IndexRecord, read_index
from pipeline.dist import DistContext, barrier
from pipeline.hashing import json_digest, update_with_file
from pipeline.images import load_images, vae_range
from pipeline.map_localisation import stored_map_localisation
from pipeline.models import LoadedModels
from pipeline.params import ScopedParams
from pipeline.stores import InversionStore, ShardWriter, StoreGeometry, prompt_rows
from spade_core.diffusion import AttentionCapture, cross_attention_layers, reconstruction_error, sample, teacher_maps
from spade_core.diffusion.models import encode_images, encode_token_ids
from spade_core.diffusion.prompts import build_relation_prompt

# the code that determines the store's content (its hash is part of the store settings)
CODE_FILES = ("pipeline/inversion.py", "spade_core/diffusion")
LOCALISATION_IMAGES = 64  # images whose stored maps are scored against their masks in invert_metrics.json


def code_version(root: Path = paths.REPO_ROOT) -> str:
    """Hash of the code that determines the store's content (a changed sampler must not reuse old shards)."""
    h = hashlib.sha256()
    for entry in CODE_FILES:
        p = root / entry
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(root).as_posix().encode())
            update_with_file(h, f)
    return h.hexdigest()[:16]


def calibration_records() -> list[IndexRecord]:
    """The prepared training images usable for calibration, in index order: the rows of the store."""
    records = [r for r in read_index(paths.index_path("train")) if r.usable_for_calibration]
    if not records:
        raise RuntimeError(f"{paths.index_path('train')}: no training image is usable for calibration")
    return records


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
        store_latents=p.invert.store_latents,
    )


def prompts_digest(records: list[IndexRecord], classes: ClassLists) -> str:
    """Digest of what the prompts are built from: each image's triplets by name. Part of the store's settings, so
    a store of the same images with other relations (the dataset prepared again with other filters) is never
    resumed as if it were complete."""
    return json_digest([(r.image_id, relation_triplets(r, classes)) for r in records])


def store_settings(models: LoadedModels, p: ScopedParams, prompts: str) -> dict:
    """The settings a store is keyed by (``prompts``: :func:`prompts_digest` of its records)."""
    inv = p.invert
    return {
        "prompts": prompts,
        "method": inv.method,
        "num_steps": inv.num_steps,
        "noise": inv.noise,
        "regenerate": inv.regenerate,
        "seed": inv.seed,
        "attn_layers": list(inv.attn_layers),
        "split": p.data.split,
        "image_size": p.model.image_size,
        "dtype": p.model.dtype,
        "teacher": models.teacher_identity,
        "code": code_version(),
    }


def open_store(models: LoadedModels, records: list[IndexRecord], classes: ClassLists, p: ScopedParams,
               ctx: DistContext) -> InversionStore:
    """Create (rank 0) or reopen ``artifacts/invert/teacher.zarr`` for ``records`` under the current settings,
    on every rank (all ranks wait for rank 0)."""
    ids = [r.image_id for r in records]
    settings = store_settings(models, p, prompts_digest(records, classes))
    geometry = geometry_for(models, len(records), p)
    paths.INVERT.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        InversionStore.create_or_open(
            paths.INVERT_STORE, geometry, ids, settings, replace_mismatched=p.invert.on_mismatch == "replace"
        )
    barrier(ctx)
    return InversionStore.create_or_open(paths.INVERT_STORE, geometry, ids, settings)


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
    """One batch: maps [B,T,ha,wa], reconstruction errors [B] (NaN when not measured) and, with
    ``invert.store_latents``, the noise latents [B,2,C,h,w]."""
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
    rows = {"attn": maps.float().cpu().numpy(), "recon_error": recon}
    if inv.store_latents:
        pair = noise if noise.ndim == 5 else torch.stack([noise, noise], dim=1)
        rows["latents"] = pair.float().cpu().numpy()
    return rows


def process_shards(
    store: InversionStore,
    todo: list[int],
    records: list[IndexRecord],
    classes: ClassLists,
    models: LoadedModels,
    p: ScopedParams,
    ctx: DistContext,
) -> dict:
    """Invert the images of the shards ``todo`` and write each shard; returns the throughput statistics."""
    tok = models.diffusion.tokenizer
    unet = models.diffusion.unet
    capture = AttentionCapture(unet, layers=cross_attention_layers(unet, p.invert.attn_layers))
    bs = p.invert.batch_size
    total = sum(np.subtract(*store.geometry.shard_range(s)[::-1]) for s in todo)
    bar = tqdm(total=total, desc=f"invert[rank {ctx.rank}]", unit="img", disable=not ctx.is_main)
    t0, done, kept = time.perf_counter(), 0, []
    for shard in todo:
        start, stop = store.geometry.shard_range(shard)
        writer = ShardWriter(store, shard)
        for b in range(start, stop, bs):
            batch = records[b : min(b + bs, stop)]
            prompts = [build_relation_prompt(relation_triplets(r, classes), tok) for r in batch]
            images = load_images(batch, p.model.image_size)
            token_ids = torch.stack([q.token_ids for q in prompts])
            writer.add(
                invert_batch(models, capture, images, token_ids, [r.image_id for r in batch], p, measure=b == start)
            )
            writer.add(prompt_rows(prompts))
            kept += [q.num_triplets_kept / max(1, len(r.relations)) for q, r in zip(prompts, batch)]
            done += len(batch)
            bar.update(len(batch))
            bar.set_postfix(img_s=f"{done / (time.perf_counter() - t0):.2f}")
        writer.write()
    bar.close()
    capture.remove()
    return {"images": done, "seconds": time.perf_counter() - t0, "triplets_kept": kept}


def store_bytes(location: str | Path) -> int:
    """Bytes on disk of a local store folder (every file under it; 0 for a remote URL)."""
    root = Path(location)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0


def unet_calls_per_image(inv) -> int:
    """UNet evaluations per image of the ``invert`` section ``inv`` (maps + noise), not counting the
    reconstruction check (``num_steps`` more calls for each measured image: the first batch of every shard)."""
    calls = {
        ("belm", False): inv.num_steps,
        ("ddim", False): inv.num_steps + 1,
        ("belm", True): 2 * inv.num_steps - 1,
        ("ddim", True): 2 * inv.num_steps,
    }[(inv.method, inv.regenerate)]
    if inv.noise == "random":
        calls = inv.num_steps
    return calls


def inversion_metrics(
    store: InversionStore,
    models: LoadedModels,
    p: ScopedParams,
    stats: dict,
    world_size: int,
    records: list[IndexRecord],
) -> dict:
    """``invert_metrics.json`` (also the store's manifest): throughput, reconstruction error, localisation."""
    inv = p.invert
    recon = store.group["recon_error"][:]
    measured = recon[~np.isnan(recon)]
    n = store.geometry.num_images
    per_image = unet_calls_per_image(inv)
    on_disk = store_bytes(store.location)
    return {
        "num_images": n,
        "method": inv.method,
        "num_steps": inv.num_steps,
        "noise": inv.noise,
        "unet_calls_per_image": per_image,
        "reconstruction_checked_images": len(measured),
        "unet_calls_total": n * per_image + len(measured) * inv.num_steps,  # + the reconstruction check
        "store_bytes_per_image": round(on_disk / n) if n and on_disk else None,
        "raw_bytes_per_image": {name: int(np.prod(store.group[name].shape[1:])) * store.group[name].dtype.itemsize
                                for name in ("attn", "latents") if name in store.geometry.arrays},
        "images_per_second_rank0": round(stats["images"] / stats["seconds"], 3) if stats["images"] else None,
        "world_size": world_size,
        "reconstruction_error_mean": float(measured.mean()) if len(measured) else None,
        "reconstruction_error_max": float(measured.max()) if len(measured) else None,
        "teacher": models.teacher_identity,
        # do the stored maps point at the named objects? (first images; `chance`: a random argmax)
        "localisation": stored_map_localisation(store, records, LOCALISATION_IMAGES),
    }
