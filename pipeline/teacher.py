"""The embedded teacher: data, architecture and localisation check of a tiny diffusion model trained on
synthetic scenes.

Status (measured, see README "Embedded teacher"): 3,000 steps at lr 3e-3 on 4,000 scenes (44 min, one CPU
thread): pointing game 0.80-0.82 for colour/shape/phrase tokens on 100 held-out scenes (0.04 at initialisation),
0.70 against the triplet's own instance. At lr 1e-3 a 1,500-step run ignores its caption and points at chance.

Latent space, not pixel space -- but a latent space that is nearly pixels. The teacher denoises the latents of
the tiny preset's VAE (``TINY_VAE_CONFIG``, 128 px images -> 4 x 16 x 16 latents) whose *encoder* is hand-set
by :func:`make_pooling_encoder` to an identity-like 8x pooling (latent channels = blurred, downsampled,
per-image-normalised RGB and their mean). Why:

* the ``invert`` stage contract is unchanged: ``encode_images(vae, images)`` -> latents -> inversion ->
  cross-attention maps, exactly as with Stable Diffusion's AutoencoderKL (same class, same config, only the
  weights differ); nothing in ``spade_core`` or the stages learns a special case, and the real-weights ``sd``
  path is untouched;
* it is cheap: a 16 x 16 x 4 latent is 48x smaller than a 128 x 128 x 3 image, so a few thousand scenes train
  in minutes on one CPU core, and the maps come out at 16 x 16 (the resolution the pipeline uses today);
* the random tiny VAE's latents do not work: measured on 32 scenes, segment membership explains only 14% of
  their spatial variance (the random encoder amplifies the images' pixel noise), against 84% for the pooling
  encoder and 93% for plain 8x average-pooled pixels. A teacher trained 480 steps on the random latents
  ignored its text (loss with shuffled captions equal to the loss with the right ones) and pointed at chance
  (0.04). Pixel space proper would need a VAE that AutoencoderKL cannot express (a special case everywhere);
  training a real tiny VAE is the better long-term option and costs another training run.

The decoder stays random: the teacher never decodes (reconstruction errors are measured in latent space).
The VAE's ``scaling_factor``/``shift_factor`` are set from the training latents (unit std), as Stable
Diffusion's were.

Data: scenes from :func:`generate_scene` drawn from ``SeedSequence([seed, split, i])`` with ``split`` 2
(teacher training) or 3 (held-out localisation check), so they never coincide with ``prepare``'s train (0)
and test (1) images. Captions: :func:`build_relation_prompt` over the scene's triplets with readable names, in
the scene's relation order, exactly as ``invert`` builds them from records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.datasets.classes import ClassLists, load_class_lists
from pipeline.datasets.synthetic import THING_STYLES, Scene, generate_scene
from spade_core.diffusion.inversion import teacher_maps
from spade_core.diffusion.localisation import (
    LocalisationQuery,
    category_masks,
    merge_scores,
    score_queries,
    summarise,
)
from spade_core.diffusion.models import (
    DiffusionModels,
    build_tiny_diffusion_models,
    encode_images,
    encode_token_ids,
)
from spade_core.diffusion.prompts import (
    ROLE_OBJECT,
    ROLE_PREDICATE,
    ROLE_SUBJECT,
    RelationPrompt,
    build_relation_prompt,
)

SPLIT_TRAIN, SPLIT_HELDOUT = 2, 3
STATS_SCENES = 256  # first training scenes whose latents set the VAE's shift/scale
TEACHER_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 96), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
KINDS = ("colour", "shape", "phrase", "phrase-instance", "stuff", "predicate")


@dataclass
class TeacherData:
    """Scenes with their captions: ``images`` [N, 3, H, W] in [-1, 1], ``token_ids`` [N, T]."""

    scenes: list[Scene]
    triplets: list[list[tuple[str, str, str]]]
    prompts: list[RelationPrompt]
    images: torch.Tensor
    token_ids: torch.Tensor


def scene_triplets(scene: Scene, classes: ClassLists) -> list[tuple[str, str, str]]:
    """(subject, predicate, object) readable names of ``scene.relations`` in order (as ``invert`` does)."""
    names, preds = classes.object_names, classes.predicate_classes
    cats = [s["category_id"] for s in scene.segments_info]
    return [(names[cats[s]], preds[p], names[cats[o]]) for s, o, p in scene.relations]


def make_teacher_data(seed: int, split: int, num_scenes: int, tokenizer: Any, image_size: int = 128,
                      min_objects: int = 2, max_objects: int = 5) -> TeacherData:
    """``num_scenes`` scenes of stream ``split`` with their relation prompts."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    classes = load_class_lists("synthetic")
    scenes = [generate_scene(np.random.default_rng([seed, split, i]), image_size, min_objects, max_objects)
              for i in range(num_scenes)]
    triplets = [scene_triplets(s, classes) for s in scenes]
    prompts = [build_relation_prompt(t, tokenizer) for t in triplets]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TeacherData(scenes, triplets, prompts, images, torch.stack([p.token_ids for p in prompts]))


@torch.no_grad()
def raw_latents(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unscaled posterior modes [N, C, h, w] of images [N, 3, H, W] in [-1, 1]."""
    return torch.cat([vae.encode(images[i:i + batch_size]).latent_dist.mode()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def make_pooling_encoder(vae: torch.nn.Module) -> torch.nn.Module:
    """Hand-set the tiny VAE's encoder (in place) to an "identity-like" 8x pooling: latent channels 0-2 are
    the image's RGB, blurred and downsampled 8x (three stride-2 3x3 box filters) and normalised per image by
    the output GroupNorm, channel 3 their mean. Every resnet and the mid attention add zero (identity
    residuals); ``+RGB`` and ``-RGB`` travel in channels 0-2 and 4-6 so the final SiLU cancels exactly
    (``silu(a) - silu(-a) = a``). diffusers' stride-2 convs zero-pad bottom/right, so the last latent row and
    column see some zero padding. The decoder stays random (the teacher never decodes). Returns ``vae``."""
    enc = vae.encoder
    for name, module in enc.named_modules():
        if name.endswith("conv2") or name.endswith("to_out.0"):
            module.weight.zero_()
            module.bias.zero_()
        elif name.endswith("downsamplers.0.conv"):
            module.weight.zero_()
            module.bias.zero_()
            for c in range(module.weight.shape[0]):
                module.weight[c, c] = 1.0 / 9.0
        elif name.endswith("conv_shortcut"):
            module.weight.zero_()
            module.bias.zero_()
            for c in range(module.weight.shape[1]):
                module.weight[c, c, 0, 0] = 1.0
    enc.conv_in.weight.zero_()
    enc.conv_in.bias.zero_()
    enc.conv_out.weight.zero_()
    enc.conv_out.bias.zero_()
    for c in range(3):
        enc.conv_in.weight[c, c, 1, 1], enc.conv_in.weight[4 + c, c, 1, 1] = 1.0, -1.0
        enc.conv_out.weight[c, c, 1, 1], enc.conv_out.weight[c, 4 + c, 1, 1] = 1.0, -1.0
        enc.conv_out.weight[3, c, 1, 1], enc.conv_out.weight[3, 4 + c, 1, 1] = 1 / 3, -1 / 3
    q = vae.quant_conv
    q.weight.copy_(torch.eye(q.weight.shape[0])[:, :, None, None])
    q.bias.zero_()
    return vae


@torch.no_grad()
def build_teacher_init(out_dir: str | Path, seed: int, stats_images: torch.Tensor) -> Path:
    """The teacher at initialisation in the diffusers layout: the tiny preset's VAE (encoder hand-set by
    :func:`make_pooling_encoder`), text encoder, tokenizer and scheduler (``build_tiny_diffusion_models(seed)``),
    a :data:`TEACHER_UNET_CONFIG` UNet (seed + 3), and the VAE's ``shift_factor``/``scaling_factor`` set so
    that the latents of ``stats_images`` have mean 0 and std 1. Same seed and images, same bytes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out = build_tiny_diffusion_models(out_dir, seed=seed)
    vae = make_pooling_encoder(AutoencoderKL.from_pretrained(out, subfolder="vae", local_files_only=True).eval())
    z = raw_latents(vae, stats_images)
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(out / "vae", safe_serialization=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        unet = UNet2DConditionModel(**TEACHER_UNET_CONFIG)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    return out


def _word_pieces(tokenizer: Any, word: str) -> int:
    return len(tokenizer(word, add_special_tokens=False)["input_ids"])


def localisation_queries(scene: Scene, prompt: RelationPrompt, tokenizer: Any) -> list[LocalisationQuery]:
    """Queries of every kept triplet: for each subject/object thing its colour word, shape word and whole
    phrase (stuff names: kind ``stuff``), and the predicate against the union of both masks.

    As in the pointing game (Zhang et al., "Top-down neural attention by excitation backprop"), a word's
    target is every instance of the category it names: with two blue boxes in a scene, "blue box" hits on
    either (each thing class has its own colour and shape, so colour and shape words name the class too).
    Kind ``phrase-instance`` scores the phrase against the one instance of the triplet only (stricter: the
    caption's word order is the only cue to which box is meant)."""
    cats = [s["category_id"] for s in scene.segments_info]
    masks = torch.stack([torch.from_numpy(scene.id_map == s["id"]) for s in scene.segments_info])
    targets = category_masks(masks, cats)
    names = load_class_lists("synthetic").object_names
    queries = []
    for k in range(prompt.num_triplets_kept):
        s, o, _ = scene.relations[k]
        for seg, role in ((s, ROLE_SUBJECT), (o, ROLE_OBJECT)):
            tokens = torch.nonzero(prompt.token_mask(k, role))[:, 0].tolist()
            name, target = names[cats[seg]], targets[seg]
            if name in THING_STYLES:
                n_colour = _word_pieces(tokenizer, name.split()[0])
                queries += [LocalisationQuery("colour", tokens[:n_colour], target),
                            LocalisationQuery("shape", tokens[n_colour:], target),
                            LocalisationQuery("phrase", tokens, target),
                            LocalisationQuery("phrase-instance", tokens, masks[seg])]
            else:
                queries.append(LocalisationQuery("stuff", tokens, target))
        pred = torch.nonzero(prompt.token_mask(k, ROLE_PREDICATE))[:, 0].tolist()
        queries.append(LocalisationQuery("predicate", pred, masks[s] | masks[o]))
    return queries


@torch.no_grad()
def evaluate_localisation(models: DiffusionModels, data: TeacherData, *, method: str = "belm", num_steps: int = 10,
                          batch_size: int = 16, keep_maps: int = 0) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Teacher maps of ``data`` (as ``invert`` computes them: final denoising step of the inversion) scored
    per token kind. Returns (``{kind: {"pointing", "iou", "n"}}``, maps [keep_maps, T, ha, wa])."""
    scores: dict[str, dict[str, list[float]]] = {}
    kept = []
    for i in range(0, len(data.scenes), batch_size):
        x0 = encode_images(models.vae, data.images[i:i + batch_size])
        cond = encode_token_ids(models.text_encoder, data.token_ids[i:i + batch_size])
        maps = teacher_maps(models.unet, x0, cond, method=method, num_steps=num_steps,
                            scheduler_config=models.scheduler_config).maps
        for j in range(len(maps)):
            q = localisation_queries(data.scenes[i + j], data.prompts[i + j], models.tokenizer)
            merge_scores(scores, score_queries(maps[j], q))
        if sum(len(m) for m in kept) < keep_maps:
            kept.append(maps)
    kept_maps = torch.cat(kept)[:keep_maps] if kept else torch.empty(0)
    return summarise(scores), kept_maps


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per token kind, pointing / top-k IoU per model (``{model: summary}``)."""
    models = list(results)
    head = "| token kind | n | " + " | ".join(f"{m} pointing | {m} top-k IoU" for m in models) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(models))]
    for kind in KINDS:
        if not all(kind in results[m] for m in models):
            continue
        cells = " | ".join(f"{results[m][kind]['pointing']:.2f} | {results[m][kind]['iou']:.2f}" for m in models)
        lines.append(f"| {kind} | {results[models[0]][kind]['n']} | {cells} |")
    return "\n".join(lines)
