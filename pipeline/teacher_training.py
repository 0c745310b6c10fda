"""Training the embedded teacher on the engine, and writing it (``spade train-teacher``).

:func:`train_teacher` trains a diffusers UNet and a CLIP text encoder jointly from scratch with the
epsilon-prediction loss (``spade_core.diffusion.teacher_training.diffusion_loss``) on (latent, caption) pairs:
batches drawn without replacement (reshuffled when the pool runs out), AdamW with a linear warm-up and a cosine
decay to 0.1 lr, gradient norm clipped at 1. One generator seeded by ``seed`` draws the shuffles, timesteps and
noise, so the same arguments give the same weights on the same machine and thread count.

:func:`write_teacher` builds the whole teacher folder (:mod:`pipeline.teacher` data and init, training, the
localisation check on held-out scenes against the same model at initialisation, ``training.json``,
``MODEL_CARD.md``) in a temporary folder and swaps it in only when everything succeeded.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import CLIPTokenizer

from pipeline.dist import DistContext
from pipeline.engine import Hook, Trainer, TrainResult
from pipeline.io import atomic_dir
from pipeline.teacher import (
    SPLIT_HELDOUT,
    SPLIT_TRAIN,
    STATS_SCENES,
    TEACHER_UNET_CONFIG,
    build_teacher_init,
    evaluate_localisation,
    format_table,
    make_teacher_data,
)
from spade_core.diffusion.models import encode_images, load_diffusion_models, write_clip_tokenizer_files
from spade_core.diffusion.schedulers import alphas_cumprod_from_config
from spade_core.diffusion.teacher_training import diffusion_loss


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


class LossLog(Hook):
    """Print the mean loss of the last ``every`` steps every ``every`` steps."""

    def __init__(self, every: int, log: Any = print):
        self.every, self.log = every, log

    def before_train(self, trainer: Trainer) -> None:
        self.t0 = time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            recent = [row["loss"] for row in trainer.history[-self.every :]]
            self.log(f"step {trainer.step}/{trainer.total_steps}  loss {sum(recent) / len(recent):.4f}  "
                     f"{time.perf_counter() - self.t0:.0f}s")


def mean_loss(result: TrainResult, first: int | None = None, last: int | None = None) -> float:
    """Mean of the first ``first`` or the last ``last`` step losses (all if neither)."""
    xs = [row["loss"] for row in result.history]
    xs = xs[:first] if first else xs[-last:] if last else xs
    return float(sum(xs) / max(len(xs), 1))


def train_teacher(unet: nn.Module, text_encoder: nn.Module, latents: Tensor, token_ids: Tensor, *, steps: int,
                  lr: float = 1e-3, batch_size: int = 32, seed: int = 0, weight_decay: float = 0.01,
                  warmup: int = 50, scheduler_config: dict[str, Any] | None = None,
                  log_every: int = 0, log: Any = print) -> TrainResult:
    """Train ``unet`` and ``text_encoder`` in place on (latent, caption) pairs; both are left in eval mode.

    Args:
        latents: [N, C, h, w] clean latents (on the models' device).
        token_ids: [N, T] long caption ids.
        steps: optimisation steps (batches of ``batch_size`` drawn without replacement, reshuffled per pass).
        lr: peak AdamW learning rate (:func:`warmup_cosine` schedule).
        seed: seeds the shuffling, timesteps and noise (the models' init is the caller's).
        scheduler_config: diffusers scheduler config of the noise schedule (``None``: Stable Diffusion's).
        log_every: print a running loss every that many steps (0: never).

    Returns:
        the engine's result (``history`` rows ``{"step", "loss"}``, ``seconds``).
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    n = latents.shape[0]
    if n != token_ids.shape[0] or n == 0:
        raise ValueError(f"latents ({n}) and token_ids ({token_ids.shape[0]}) must hold the same non-zero count")
    abar = alphas_cumprod_from_config(scheduler_config, epsilon_only=True)
    g = torch.Generator().manual_seed(seed)
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    pool = {"order": torch.empty(0, dtype=torch.long)}

    def run_step(step: int) -> dict[str, float]:
        if pool["order"].numel() < batch_size:
            pool["order"] = torch.cat([pool["order"], torch.randperm(n, generator=g)])
        idx, pool["order"] = pool["order"][:batch_size], pool["order"][batch_size:]
        loss = diffusion_loss(unet, text_encoder, latents[idx], token_ids[idx], abar, g)
        loss.backward()
        return {"loss": float(loss.detach())}

    device = latents.device
    trainer = Trainer(run_step=run_step, optimizer=opt, parameters=params, total_steps=steps, ctx=DistContext(),
                      device=device, lr_at=lambda s: lr * warmup_cosine(s, steps, warmup), grad_clip=1.0,
                      hooks=[LossLog(log_every, log)] if log_every else [])
    unet.train()
    text_encoder.train()
    try:
        return trainer.train()
    finally:
        unet.eval()
        text_encoder.eval()


def write_teacher(out_dir: str | Path, steps: int = 3000, seed: int = 0, num_scenes: int = 4000,
                  batch_size: int = 32, lr: float = 3e-3, image_size: int = 128, eval_scenes: int = 100,
                  threads: int | None = 1, log_every: int = 50) -> dict:
    """Train and write the teacher into ``out_dir`` (replaced only on success: an interrupted run leaves the
    previous teacher untouched). Returns the record written to ``training.json``."""
    if threads:
        torch.set_num_threads(threads)
    with atomic_dir(out_dir) as tmp:
        record = _train_into(tmp, steps, seed, num_scenes, batch_size, lr, image_size, eval_scenes, threads,
                             log_every)
    print(format_table(record["localisation"]))
    return record


def _train_into(tmp: Path, steps: int, seed: int, num_scenes: int, batch_size: int, lr: float, image_size: int,
                eval_scenes: int, threads: int | None, log_every: int) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spade-teacher-") as scratch:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(Path(scratch) / "tok"),
                                                  local_files_only=True)
        data = make_teacher_data(seed, SPLIT_TRAIN, num_scenes, tokenizer, image_size)
        stats_scenes = min(STATS_SCENES, num_scenes)  # the VAE's shift/scale come from the first scenes
        build_teacher_init(tmp, seed, data.images[:stats_scenes])
        init_dir = Path(shutil.copytree(tmp, Path(scratch) / "init"))  # the same model, kept for the comparison
        models = load_diffusion_models(tmp)
        latents = torch.cat([encode_images(models.vae, data.images[i:i + 64]) for i in range(0, num_scenes, 64)])
        t_data = time.perf_counter() - t0
        print(f"data: {num_scenes} scenes, latents {tuple(latents.shape)} std {latents.std():.3f} in {t_data:.0f}s")
        result = train_teacher(models.unet, models.text_encoder, latents, data.token_ids, steps=steps, lr=lr,
                               batch_size=batch_size, seed=seed, scheduler_config=models.scheduler_config,
                               log_every=log_every)
        models.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        models.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)

        held = make_teacher_data(seed, SPLIT_HELDOUT, eval_scenes, tokenizer, image_size)
        trained = evaluate_localisation(load_diffusion_models(tmp), held)[0]
        init = evaluate_localisation(load_diffusion_models(init_dir), held)[0]
    n_params = sum(p.numel() for m in (models.unet, models.text_encoder) for p in m.parameters())
    record = {
        "seed": seed, "steps": steps, "num_scenes": num_scenes, "batch_size": batch_size, "lr": lr,
        "image_size": image_size, "stats_scenes": stats_scenes, "threads": threads, "eval_scenes": eval_scenes,
        "data_seconds": round(t_data, 1), "train_seconds": round(result.seconds, 1),
        "loss_first50": mean_loss(result, first=50), "loss_last50": mean_loss(result, last=50),
        "unet_config": TEACHER_UNET_CONFIG, "parameters": n_params,
        "localisation": {"trained": trained, "init": init},
    }  # fmt: skip
    (tmp / "training.json").write_text(json.dumps(record, indent=2, default=list) + "\n")
    (tmp / "MODEL_CARD.md").write_text(model_card(record))
    return record


def model_card(r: dict) -> str:
    table = format_table({"trained": r["localisation"]["trained"], "init": r["localisation"]["init"]})
    return f"""# SPADE embedded teacher (tiny, trained on synthetic scenes)

A diffusers `UNet2DConditionModel` ({r['parameters'] / 1e6:.2f} M parameters with the text encoder) trained
from scratch with the epsilon-prediction loss in the latent space of the tiny preset's VAE with its encoder
hand-set to an identity-like 8x pooling of RGB (`pipeline.teacher.make_pooling_encoder`; 128 px -> 4 x 16 x 16;
`scaling_factor`/`shift_factor` set for unit-std latents; decoder random, unused), jointly with the tiny
CLIP text encoder (width 32) over open_clip's BPE tokenizer. Loads with
`spade_core.diffusion.models.load_diffusion_models`.

- Data: {r['num_scenes']} synthetic scenes of {r['image_size']} px, `generate_scene` with
  `SeedSequence([{r['seed']}, 2, i])` (disjoint from `prepare`'s streams 0/1), captions from
  `build_relation_prompt` over each scene's relation triplets (readable names).
- Training: {r['steps']} steps, batch {r['batch_size']}, AdamW lr {r['lr']} (warm-up, cosine to 0.1 lr), seed
  {r['seed']}, {r['threads']} CPU thread(s); data {r['data_seconds']} s, training {r['train_seconds']} s.
  Loss (mean of first / last 50 steps): {r['loss_first50']:.4f} -> {r['loss_last50']:.4f}.
- Reproduce (CPU): `spade train-teacher <out> --steps {r['steps']} --seed {r['seed']}
  --num-scenes {r['num_scenes']} --batch-size {r['batch_size']} --lr {r['lr']} --threads {r['threads']}`. Same seed
  and thread count on CPU give the same weights; other machines or thread counts differ by float round-off.

## Localisation ({r['eval_scenes']} held-out scenes, stream 3; BELM 10 steps, maps of the final denoising step)

Pointing game: the map's argmax lies on an instance of the category the tokens name (the pointing game's
rule; `phrase-instance`: on the triplet's one instance). Top-k IoU: k = the target's area. `phrase` = mean over
the object's tokens; `stuff` = stuff names; `predicate` against the union of subject and object masks.
`init` = the same model at initialisation.

{table}
"""
