"""Inversion-guided calibration on the training engine: fit the student's LoRA and captioner to the teacher maps.

The student is the teacher's UNet with ``calibrate.mode`` applied (``lora``: LoRA on ``calibrate.lora_targets``;
``full``: every UNet weight trainable; ``none``: nothing trained) and conditioned on ``ImplicitCaptioner(CLIP(x))``
instead of text (paper eq. 4). Per step: the clean VAE latent of each image goes through the UNet at t = 0, the
cross-attention maps (all ``attn2`` layers, heads and layers averaged, at the store's resolution) are compared
with the stored teacher maps by ``calibration_loss`` (paper eq. 5; tokens past the prompt length masked), and
AdamW updates the LoRA (or UNet) and adapter weights. Data: :mod:`pipeline.calibration_data` (shard-aligned block
reads, seeded block shuffling, batches a pure function of the step). With ``calibrate.cache_latents`` each clean
latent is encoded once, alone, and kept.

Scale: under ``torchrun`` rank r takes its slice of each global batch; each micro-batch loss is scaled by
``b / calibrate.batch_size`` and the engine sums gradients and losses over ranks, so the step optimises the mean
over the global batch whatever the number of processes. Resume: :class:`pipeline.engine.Checkpointer` under
``artifacts/calibrate_checkpoints``, keyed by :func:`settings_digest`. See docs/DESIGN.md §4.2 (calibration).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

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
from pipeline.dist import DistContext, split_global_batch
from pipeline.engine import Checkpointer, ProgressBar, Trainer, TrainResult
from pipeline.hashing import code_digest, json_digest
from pipeline.images import vae_range
from pipeline.inversion import calibration_records
from pipeline.models import LoadedModels
from pipeline.params import CalibrateParams
from pipeline.stores import InversionStore, StoreMismatchError
from pipeline.student import Student, build_student, student_config, student_maps
from spade_core.calibration import calibration_loss, map_correlation
from spade_core.diffusion import AttentionCapture, cross_attention_layers, encode_images

# calibrate params that do not change the weights after a given step (a checkpoint stays valid across them)
NOT_HASHED = ("steps", "checkpoint_every", "num_workers")  # cache_latents is hashed: batched vs per-image VAE


def open_store(models: LoadedModels, image_size: int) -> InversionStore:
    """The teacher store, refused if made with another teacher / image size or for other images."""
    store = InversionStore.open(
        paths.INVERT_STORE, expected={"teacher": models.teacher_identity, "image_size": image_size}
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


def settings_digest(c: CalibrateParams, dtype: str, image_size: int, models: LoadedModels,
                    store: InversionStore) -> str:
    """Digest of everything that determines the weights after a given step (the checkpoints' key), the code
    included (``code_digest``)."""
    return json_digest({
        "calibrate": c.model_dump(exclude=set(NOT_HASHED)), "dtype": dtype, "image_size": image_size,
        "store": store.settings, "teacher": models.teacher_identity, "clip": models.clip_identity,
        "code": code_digest(),
    })


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


@dataclass
class CalibrationResult:
    """The calibrated ``student`` (+ its ``config`` for ``student.json``), the engine's ``run`` (history rows
    ``{"step", "loss"}``), held-out metrics ``before``/``after`` (None on ranks > 0) and data-wait seconds."""

    student: Student
    config: dict
    run: TrainResult
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    wait: float = 0.0
    num_train: int = 0
    num_heldout: int = 0


def calibrate_student(models: LoadedModels, store: InversionStore, c: CalibrateParams, *, image_size: int,
                      dtype: str, ctx: DistContext, device: torch.device,
                      stop_after: int | None = None) -> CalibrationResult:
    """Build the student for ``c.mode`` and train it against ``store`` on the engine (see the module docstring)."""
    g = store.geometry
    block = validate_read_block(c.read_block, g.shard_size)
    config = student_config(
        models, mode=c.mode, rank=c.lora_rank, alpha=c.lora_alpha, targets=c.lora_targets, num_tokens=g.num_tokens,
        hidden_dim=c.adapter_hidden_dim, attn_shape=g.attn_shape, image_size=image_size,
        store_settings=store.settings, seed=c.seed,
    )  # fmt: skip
    student, _ = build_student(models, config)
    if c.mode == "none":
        student.captioner.requires_grad_(False)
    named = [
        *((f"unet.{n}", q) for n, q in student.unet.named_parameters() if q.requires_grad),
        *((f"captioner.{n}", q) for n, q in student.captioner.named_parameters() if q.requires_grad),
    ]
    # the student's maps average the same cross-attention layers as the stored teacher maps (invert.attn_layers)
    layers = cross_attention_layers(student.unet, store.settings.get("attn_layers"))
    runner = MapRunner(student, AttentionCapture(student.unet, layers=layers, keep_graph=True), tuple(g.attn_shape),
                       {} if c.cache_latents else None)  # fmt: skip
    train_idx, held_idx = heldout_split(g.num_images, c.heldout_fraction, c.seed)
    order = BlockOrder(g.num_images, block, train_idx, c.shuffle_window, c.seed)
    dataset = CalibrationDataset(paths.INVERT_STORE, calibration_records(), image_size, block, c.shuffle_window)
    micro, _ = split_global_batch(c.batch_size, ctx.world_size, c.micro_batch)
    before = heldout_metrics(runner, dataset, held_idx, micro) if ctx.is_main else {}

    steps = c.steps if c.mode != "none" else 0
    params = [q for _, q in named]
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay) if named else None
    state = {"batches": None, "accumulation": 1, "wait": 0.0}

    def run_step(step: int) -> dict[str, float]:
        """This rank's micro-batches of the global batch: forward + backward, -> its share of the loss."""
        total = 0.0
        for _ in range(state["accumulation"]):
            t = time.perf_counter()
            batch = next(state["batches"])
            state["wait"] += time.perf_counter() - t
            maps, teacher, mask = runner(batch)
            loss = calibration_loss(maps, teacher, mask, lam=c.lam) * (len(maps) / c.batch_size)
            if torch.is_grad_enabled():
                loss.backward()
            total += float(loss.detach().double())
        return {"loss": total}

    def restore(tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, q in named:
                q.copy_(tensors[n])

    trainer = Trainer(
        run_step=run_step, optimizer=opt, parameters=params, total_steps=steps, ctx=ctx, device=device,
        named_tensors=lambda: dict(named), restore=restore,
        checkpointer=Checkpointer(paths.CALIBRATE_CHECKPOINTS,
                                  settings_digest(c, dtype, image_size, models, store)) if named else None,
        checkpoint_every=c.checkpoint_every, stop_after=stop_after, hooks=[ProgressBar("calibrate")],
    )  # fmt: skip
    start = trainer.resume()
    if trainer.resumed_from is not None and ctx.is_main:
        print(f"calibrate: resuming from {trainer.resumed_from} (step {start})")
    sampler = StepBatches(order, c.batch_size, start, max(steps, 1), ctx.rank, ctx.world_size, micro)
    state["accumulation"] = sampler.accumulation
    state["batches"] = iter(make_loader(dataset, sampler, c.num_workers, pin_memory=device.type == "cuda"))
    if steps == 0:  # nothing to train: the curve's one point is the loss on the first batch
        with torch.no_grad():
            first = run_step(0)
        result = TrainResult(0, 0, 0.0, [{"step": 0, **first}])
    else:
        result = trainer.train()
    out = CalibrationResult(student, config, result, before, wait=state["wait"], num_train=len(train_idx),
                            num_heldout=len(held_idx))
    if ctx.is_main and not result.interrupted:
        out.after = before if c.mode == "none" else heldout_metrics(runner, dataset, held_idx, micro)
    return out


def calibration_metrics(r: CalibrationResult, c: CalibrateParams, ctx: DistContext, peak_memory_mb: float,
                        device: torch.device, teacher: str) -> dict:
    """The ``calibrate_metrics.json`` content (held-out L1 / correlation before and after, speed, memory)."""
    run = r.run
    losses = [row["loss"] for row in run.history]
    ran, seconds = run.steps_this_run, run.seconds
    last = losses[-10:]
    return {
        "mode": c.mode,
        "steps": run.step,
        "steps_this_run": ran,
        "resumed_from_step": run.start,
        "batch_size": c.batch_size,
        "world_size": ctx.world_size,
        "num_train_images": r.num_train,
        "num_heldout_images": r.num_heldout,
        "train_l1_first": losses[0] / c.lam if losses else None,
        "train_l1_final": float(np.mean(last)) / c.lam if last else None,
        "heldout_l1_before": r.before["l1"],
        "heldout_l1_after": r.after["l1"],
        "heldout_corr_before": r.before["corr"],
        "heldout_corr_after": r.after["corr"],
        "seconds": round(seconds, 3),
        "steps_per_second": round(ran / seconds, 4) if ran and seconds > 0 else None,
        "data_share": round(r.wait / seconds, 4) if ran and seconds > 0 else None,
        "peak_memory_mb": round(peak_memory_mb, 1),
        "device": str(device),
        "teacher": teacher,
    }
