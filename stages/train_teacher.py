"""``spade train-teacher``: train the embedded teacher on synthetic scenes and write it in the diffusers layout.

``run(out_dir, steps, seed, ...)``: builds the teacher at initialisation (:func:`build_teacher_init`), encodes
``num_scenes`` training scenes (stream 2 of ``seed``, see :mod:`pipeline.teacher`) with its frozen VAE, trains
UNet + text encoder (:func:`train_teacher`), saves them as safetensors into ``out_dir`` (loadable with
``load_diffusion_models``), scores localisation on ``eval_scenes`` held-out scenes (stream 3) for the trained
teacher and the same model at initialisation, and writes ``MODEL_CARD.md`` and ``training.json``.
Same arguments on CPU, same weights (up to floating-point differences between machines/thread counts).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPTokenizer

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
from spade_core.diffusion.teacher_training import train_teacher


def run(out_dir: str | Path, steps: int = 3000, seed: int = 0, num_scenes: int = 4000, batch_size: int = 32,
        lr: float = 3e-3, image_size: int = 128, eval_scenes: int = 100, threads: int | None = 1,
        log_every: int = 50) -> dict:
    """Train and write the teacher into ``out_dir``. Everything is built in ``<out_dir>.tmp`` and moved into
    place at the end, so an interrupted run leaves the previous teacher untouched. Returns the record written
    to ``training.json``."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        record = _train_into(tmp, steps, seed, num_scenes, batch_size, lr, image_size, eval_scenes, threads, log_every)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written survives an error or Ctrl-C
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
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
        "loss_first50": result.mean_loss(first=50), "loss_last50": result.mean_loss(last=50),
        "unet_config": TEACHER_UNET_CONFIG, "parameters": n_params,
        "localisation": {"trained": trained, "init": init},
    }
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
