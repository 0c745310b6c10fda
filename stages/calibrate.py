"""Stage ``calibrate``: fit the implicit captioner and the student UNet's LoRA to the teacher's attention maps.

The student is the teacher's UNet with ``calibrate.mode`` applied (``lora``: LoRA on ``calibrate.lora_targets``;
``full``: every UNet weight trainable; ``none``: nothing trained) and conditioned on
``ImplicitCaptioner(CLIP(x))`` instead of text. Per step: the clean VAE latent of each image goes through the
UNet at t = 0, the cross-attention maps (all ``attn2`` layers, heads and layers averaged, at the store's
resolution) are compared with the teacher maps of the inversion store by ``calibration_loss`` (tokens past the
prompt length masked), AdamW updates the LoRA (or UNet) and adapter weights. Data: see
``pipeline.calibration_data`` (shard-aligned block reads, seeded block shuffling). The clean latents are a frozen
function of the image: with ``calibrate.cache_latents`` each is encoded once, alone, and kept (about a third of
a step's time at the tiny preset).

Scale: under ``torchrun`` rank r takes its slice of each global batch; each micro-batch loss is scaled by
``b / calibrate.batch_size`` and the trainable gradients are summed over ranks (gloo/NCCL all-reduce), so the
loss is the mean over the global batch whatever the number of processes. Resume: every
``calibrate.checkpoint_every`` steps rank 0 writes ``artifacts/calibrate_checkpoints/step-XXXXXXX/`` (trainable
weights as safetensors, AdamW state, step, loss history, settings hash); a rerun resumes from the latest
checkpoint whose settings hash matches and ends with the weights of an uninterrupted run (the data order is a
pure function of (seed, step); no dropout: the UNet stays in eval mode). ``SPADE_STOP_AFTER_STEP=k`` stops the
run after step k without writing outputs (to test resume).

Outputs: ``artifacts/calibrate/`` (see ``pipeline.student``, written to a temporary folder and renamed),
``artifacts/calibrate_metrics.json`` (held-out L1 / map correlation before and after, speed, memory) and
``artifacts/calibrate_curve.csv`` (``step,loss``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipeline import paths
from pipeline.calibration_data import (
    BlockOrder,
    CalibrationDataset,
    StepBatches,
    heldout_batches,
    heldout_split,
    make_loader,
    validate_read_block,
)
from pipeline.dist import DistContext, allreduce_grads, barrier, init_distributed, shutdown, split_global_batch
from pipeline.images import vae_range
from pipeline.models import LoadedModels, load_models, resolve_device
from pipeline.params import ScopedParams
from pipeline.stores import InversionStore, StoreMismatchError
from pipeline.student import Student, build_student, student_config, student_maps
from spade_core.calibration import calibration_loss, lora_state_dict, map_correlation, save_adapter
from spade_core.diffusion import AttentionCapture, encode_images
from stages.invert import calibration_records

PARAMS = ("model.dtype", "model.device", "model.image_size", "calibrate")
STOP_ENV = "SPADE_STOP_AFTER_STEP"
# calibrate params that do not change the weights after a given step (a checkpoint stays valid across them)
NOT_HASHED = ("steps", "checkpoint_every", "num_workers")  # cache_latents is hashed: batched vs per-image VAE

log = logging.getLogger("stages.calibrate")


def open_store(models: LoadedModels, p: ScopedParams) -> InversionStore:
    """The teacher store, refused if made with another teacher / image size or for other images."""
    store = InversionStore.open(
        paths.INVERT_STORE, expected={"teacher": models.teacher_identity, "image_size": p.model.image_size}
    )
    ids = [r.image_id for r in calibration_records()]
    if store.image_ids != ids:
        raise StoreMismatchError(
            f"inversion store {paths.INVERT_STORE} holds other images than the prepared "
            "calibration set; rerun the `invert` stage (dvc repro invert)"
        )
    if store.geometry.num_tokens != models.diffusion.tokenizer.model_max_length:
        raise StoreMismatchError(
            f"inversion store has {store.geometry.num_tokens} tokens per prompt, the teacher "
            f"tokenizer {models.diffusion.tokenizer.model_max_length}"
        )
    return store


def settings_hash(p: ScopedParams, models: LoadedModels, store: InversionStore) -> str:
    c = p.calibrate.model_dump(exclude=set(NOT_HASHED))
    key = {
        "calibrate": c,
        "dtype": p.model.dtype,
        "image_size": p.model.image_size,
        "store": store.settings,
        "teacher": models.teacher_identity,
        "clip": models.clip_identity,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class MapRunner:
    """Student maps for dataset batches. ``latents``: a cache store index -> clean VAE latent [C,h,w], filled
    one image at a time (so a latent never depends on the batch it first came in: resume stays exact), or
    None to encode every batch."""

    student: Student
    capture: AttentionCapture
    size: tuple[int, int]
    latents: dict[int, torch.Tensor] | None = None

    def encode(self, images: torch.Tensor, indices: list[int]) -> torch.Tensor:
        vae = self.student.vae
        if self.latents is None:
            return encode_images(vae, vae_range(images))
        for i, x in zip(indices, images):
            if i not in self.latents:
                self.latents[i] = encode_images(vae, vae_range(x[None]))[0]
        return torch.stack([self.latents[i] for i in indices])

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> student maps [B,T,ha,wa], teacher maps [B,T,ha,wa] float32, token mask [B,T] bool."""
        device = self.student.captioner.token_bias.device
        images = batch["image"].to(device)
        latents = self.encode(images, batch["index"].tolist())
        maps = student_maps(self.student, self.capture, images, self.size, latents=latents)
        teacher = batch["attn"].to(device).float()
        mask = torch.arange(teacher.shape[1], device=device)[None] < batch["length"].to(device)[:, None]
        return maps, teacher, mask


@torch.no_grad()
def heldout_metrics(
    runner: MapRunner, dataset: CalibrationDataset, heldout: np.ndarray, batch_size: int
) -> dict[str, float | None]:
    """Mean L1 (``calibration_loss`` with lam = 1, per image) and nanmean map correlation on the held-out images."""
    if len(heldout) == 0:
        return {"l1": None, "corr": None}
    l1, corr = [], []
    for batch in make_loader(dataset, heldout_batches(heldout, batch_size), num_workers=0):
        maps, teacher, mask = runner(batch)
        l1 += [float(calibration_loss(maps[i : i + 1], teacher[i : i + 1], mask[i : i + 1])) for i in range(len(maps))]
        corr += map_correlation(maps, teacher, mask).double().cpu().tolist()
    return {"l1": float(np.mean(l1)), "corr": None if np.isnan(corr).all() else float(np.nanmean(corr))}


# ------------------------------------------------------------------------------------------ checkpoints
def _step_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.glob("step-*") if d.is_dir() and not d.name.endswith(".tmp"))


def find_checkpoint(root: Path, digest: str, max_step: int, clean: bool) -> Path | None:
    """The latest complete checkpoint of these settings with step <= ``max_step``; ``clean`` removes the
    checkpoints of other settings (with a log line)."""
    found = None
    for d in _step_dirs(root):
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("settings") != digest:
            if clean:
                log.warning(
                    "calibrate: removing checkpoint %s made with other settings (%s != %s)",
                    d,
                    state.get("settings"),
                    digest,
                )
                shutil.rmtree(d, ignore_errors=True)
            continue
        if int(state.get("step", max_step + 1)) <= max_step:
            found = d
    return found


def save_checkpoint(root: Path, step: int, named: list[tuple[str, torch.nn.Parameter]], opt, state: dict) -> None:
    """Write ``step-XXXXXXX/`` atomically (temp folder + rename), then drop the older checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / "trainable.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "names": [n for n, _ in named]}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for d in _step_dirs(root):
        if d != final:
            shutil.rmtree(d, ignore_errors=True)


def load_checkpoint(d: Path, named: list[tuple[str, torch.nn.Parameter]], opt) -> dict:
    state = json.loads((d / "state.json").read_text())
    if state["names"] != [n for n, _ in named]:
        raise ValueError(f"{d}: trainable parameters differ from the checkpoint's; delete it to start afresh")
    weights = load_file(str(d / "trainable.safetensors"))
    with torch.no_grad():
        for n, p in named:
            p.copy_(weights[n])
    opt.load_state_dict(torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True))
    return state


# ------------------------------------------------------------------------------------------------ run
def run(p: ScopedParams) -> None:
    c = p.calibrate
    device = resolve_device(p.model.device)
    ctx = init_distributed(device)
    models = load_models(paths.MODELS, device=str(device), dtype=p.model.dtype)
    store = open_store(models, p)
    g = store.geometry
    block = validate_read_block(c.read_block, g.shard_size)
    config = student_config(
        models, mode=c.mode, rank=c.lora_rank, alpha=c.lora_alpha, targets=c.lora_targets, num_tokens=g.num_tokens,
        hidden_dim=c.adapter_hidden_dim, attn_shape=g.attn_shape, image_size=p.model.image_size,
        store_settings=store.settings, seed=c.seed,
    )  # fmt: skip
    student, _ = build_student(models, config)
    if c.mode == "none":
        student.captioner.requires_grad_(False)
    named = [
        *((f"unet.{n}", q) for n, q in student.unet.named_parameters() if q.requires_grad),
        *((f"captioner.{n}", q) for n, q in student.captioner.named_parameters() if q.requires_grad),
    ]
    runner = MapRunner(student, AttentionCapture(student.unet, keep_graph=True), tuple(g.attn_shape),
                       {} if c.cache_latents else None)  # fmt: skip
    train_idx, held_idx = heldout_split(g.num_images, c.heldout_fraction, c.seed)
    order = BlockOrder(g.num_images, block, train_idx, c.shuffle_window, c.seed)
    dataset = CalibrationDataset(paths.INVERT_STORE, calibration_records(), p.model.image_size, block, c.shuffle_window)
    micro, _ = split_global_batch(c.batch_size, ctx.world_size, c.micro_batch)
    before = heldout_metrics(runner, dataset, held_idx, micro) if ctx.is_main else {}

    digest = settings_hash(p, models, store)
    steps = c.steps if c.mode != "none" else 0
    opt = torch.optim.AdamW([q for _, q in named], lr=c.lr, weight_decay=c.weight_decay) if named else None
    start, losses, wait = 0, [], 0.0
    if named:
        if ctx.is_main:
            find_checkpoint(paths.CALIBRATE_CHECKPOINTS, digest, steps, clean=True)
        barrier(ctx)
        ckpt = find_checkpoint(paths.CALIBRATE_CHECKPOINTS, digest, steps, clean=False)
        if ckpt is not None:
            state = load_checkpoint(ckpt, named, opt)
            start, losses = state["step"], list(state["losses"])
            if ctx.is_main:
                print(f"calibrate: resuming from {ckpt} (step {start})")
    stop_after = int(os.environ.get(STOP_ENV, "0")) or None
    sampler = StepBatches(order, c.batch_size, start, max(steps, 1), ctx.rank, ctx.world_size, micro)
    batches = iter(make_loader(dataset, sampler, c.num_workers, pin_memory=device.type == "cuda"))
    bar = tqdm(total=steps, initial=start, desc="calibrate", unit="step", disable=not ctx.is_main)
    t0 = time.perf_counter()
    if steps == 0 and start == 0:  # nothing to train: the curve's one point is the loss on the first batch
        with torch.no_grad():
            losses = [_step(runner, batches, sampler.accumulation, c, ctx, None, [])[0]]
    for step in range(start, steps):
        loss, waited = _step(runner, batches, sampler.accumulation, c, ctx, opt, [q for _, q in named])
        losses.append(loss)
        wait += waited
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{(done - start) / (time.perf_counter() - t0):.2f}")
        if done % c.checkpoint_every == 0 or done == steps:
            if ctx.is_main:
                save_checkpoint(paths.CALIBRATE_CHECKPOINTS, done, named, opt, {"settings": digest, "losses": losses})
            barrier(ctx)
        if stop_after is not None and stop_after <= done < steps:
            bar.close()
            print(f"calibrate: stopping after step {done} ({STOP_ENV})")
            shutdown(ctx)
            return
    seconds = time.perf_counter() - t0
    bar.close()
    if ctx.is_main:
        after = before if c.mode == "none" else heldout_metrics(runner, dataset, held_idx, micro)
        stats = {"start": start, "steps": steps, "seconds": seconds, "wait": wait, "train": len(train_idx),
                 "heldout": len(held_idx)}  # fmt: skip
        write_outputs(student, config, losses, before, after, stats, models, p, ctx, device)
    barrier(ctx)
    shutdown(ctx)


def _step(runner: MapRunner, batches, accumulation: int, c, ctx: DistContext, opt, params) -> tuple[float, float]:
    """One optimizer step (``opt`` None: loss only). Returns the global-batch loss and the data wait time.

    Each micro-batch loss is ``calibration_loss * b / batch_size``; gradients are summed over micro-batches and
    ranks, so the step optimises the mean over the global batch whatever the number of processes."""
    total, waited = torch.zeros((), dtype=torch.float64), 0.0
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    for _ in range(accumulation):
        t = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t
        maps, teacher, mask = runner(batch)
        loss = calibration_loss(maps, teacher, mask, lam=c.lam) * (len(maps) / c.batch_size)
        if opt is not None:
            loss.backward()
        total += loss.detach().double().cpu()
    if ctx.enabled:
        torch_dist.all_reduce(total)
    if opt is not None:
        allreduce_grads(params, ctx)
        opt.step()
    return float(total), waited


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def write_outputs(student, config, losses, before, after, stats, models, p, ctx, device) -> None:
    """Rank 0: the student folder (atomic), the metrics JSON and the loss curve CSV."""
    c = p.calibrate
    out = paths.CALIBRATE
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_adapter(student.captioner, tmp / "adapter.safetensors")
    if c.mode == "lora":
        save_file(lora_state_dict(student.unet), str(tmp / "lora.safetensors"))
    elif c.mode == "full":
        student.unet.save_pretrained(tmp / "unet", safe_serialization=True)
    (tmp / "student.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)

    steps = stats["steps"]
    ran = steps - stats["start"]
    last = losses[-10:]
    metrics = {
        "mode": c.mode,
        "steps": steps,
        "steps_this_run": ran,
        "resumed_from_step": stats["start"],
        "batch_size": c.batch_size,
        "world_size": ctx.world_size,
        "num_train_images": stats["train"],
        "num_heldout_images": stats["heldout"],
        "train_l1_first": losses[0] / c.lam if losses else None,
        "train_l1_final": float(np.mean(last)) / c.lam if last else None,
        "heldout_l1_before": before["l1"],
        "heldout_l1_after": after["l1"],
        "heldout_corr_before": before["corr"],
        "heldout_corr_after": after["corr"],
        "seconds": round(stats["seconds"], 3),
        "steps_per_second": round(ran / stats["seconds"], 4) if ran and stats["seconds"] > 0 else None,
        "data_share": round(stats["wait"] / stats["seconds"], 4) if ran and stats["seconds"] > 0 else None,
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "device": str(device),
        "teacher": models.teacher_identity,
    }
    _write_atomic(paths.CALIBRATE_METRICS, json.dumps(metrics, indent=2) + "\n")
    rows = list(enumerate(losses, start=1)) if steps else [(0, losses[0])]
    _write_atomic(paths.CALIBRATE_CURVE, "step,loss\n" + "".join(f"{s},{v:.6g}\n" for s, v in rows))
    print(
        f"calibrate: mode={c.mode} steps={steps} held-out L1 {before['l1']} -> {after['l1']}, "
        f"correlation {before['corr']} -> {after['corr']} -> {out}"
    )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    from stages.cli import run_stage_main

    run_stage_main("calibrate")
