"""The calibrated student: the teacher's UNet (+ LoRA, or fully fine-tuned) conditioned by the implicit captioner.

``calibrate`` writes ``artifacts/calibrate/``::

    student.json          everything needed to rebuild the student (see :func:`student_config`)
    adapter.safetensors   the captioner's MLP adapter + token embedding (``save_adapter``)
    lora.safetensors      mode ``lora``: the LoRA weights (peft state dict)
    unet/                 mode ``full``: the whole fine-tuned UNet (diffusers layout, safetensors)

:func:`load_student` rebuilds it on top of :func:`pipeline.models.load_models`; later stages compute frozen
features with :func:`student_condition` (conditioning tokens) and the UNet at t = 0. In mode ``lora`` the
student shares the teacher's UNet module (LoRA injected in place; the teacher is
``spade_core.calibration.teacher_mode(student.unet)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline import paths
from pipeline.images import vae_range
from pipeline.io import atomic_dir
from pipeline.models import LoadedModels
from spade_core.calibration import (
    ImplicitCaptioner,
    load_adapter,
    load_lora_state_dict,
    lora_state_dict,
    save_adapter,
    set_calibration_mode,
)
from spade_core.calibration.clip import ClipModels
from spade_core.calibration.lora import ADAPTER_NAME
from spade_core.diffusion import AttentionCapture, encode_images, encode_prompts

STUDENT_FORMAT = 1


@dataclass
class Student:
    """The student parts. ``unet`` and ``vae`` are in the run's dtype (its LoRA weights float32, as trained);
    ``captioner`` float32. Inputs are cast to the UNet dtype at each call (``student_maps``,
    ``spade_core.psg.UNetFeatureExtractor``)."""

    unet: nn.Module
    captioner: ImplicitCaptioner
    clip: ClipModels
    vae: nn.Module
    config: dict[str, Any]


def empty_prompt_tokens(models: LoadedModels) -> torch.Tensor:
    """[T, D] float32: the teacher text encoder's embedding of the empty prompt (ODISE's null-prompt start)."""
    d = models.diffusion
    cond, _, _ = encode_prompts(d.text_encoder, d.tokenizer, [""])
    return cond[0].float().cpu()


def student_config(
    models: LoadedModels,
    *,
    mode: str,
    rank: int,
    alpha: float,
    targets: list[str],
    num_tokens: int,
    hidden_dim: int,
    attn_shape: tuple[int, int],
    image_size: int,
    store_settings: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The ``student.json`` content (plain JSON types)."""
    return {
        "format": STUDENT_FORMAT,
        "mode": mode,
        "lora_rank": rank,
        "lora_alpha": float(alpha),
        "lora_targets": list(targets),
        "num_tokens": num_tokens,
        "cross_attention_dim": int(models.diffusion.unet.config.cross_attention_dim),
        "hidden_dim": hidden_dim,
        "embed_dim": models.clip.embed_dim,
        "attn_shape": list(attn_shape),
        "image_size": image_size,
        "teacher": models.teacher_identity,
        "clip": models.clip_identity,
        "store_settings": store_settings,
        "seed": seed,
    }


def make_captioner(models: LoadedModels, config: dict[str, Any],
                   init_tokens: torch.Tensor | None = None) -> ImplicitCaptioner:
    """The implicit captioner ``MLP(CLIP_image(x))`` (paper eq. 4) of a ``student.json`` config, on the CPU."""
    return ImplicitCaptioner(
        models.clip.model,
        models.clip.embed_dim,
        num_tokens=config["num_tokens"],
        cross_attention_dim=config["cross_attention_dim"],
        hidden_dim=config["hidden_dim"],
        init_tokens=init_tokens,
    )


def _fork_rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def build_student(models: LoadedModels, config: dict[str, Any]) -> tuple[Student, list[nn.Parameter]]:
    """Turn ``models`` into a fresh (uncalibrated) student for ``config``; returns it and the UNet parameters
    to optimise (LoRA, all UNet weights, or none by mode; the adapter's are ``captioner.trainable_parameters()``).

    Initialisation is seeded by ``config["seed"]`` (LoRA A and the adapter MLP); the global RNG is left as it was.
    Mode ``none`` (paper Table 5, "w/o calibration") means the pretrained UNet as it is, conditioned on the
    teacher's empty-prompt embedding (the adapter's output layer is zero, so ``cond = token_bias`` = that
    embedding for every image), not on an untrained adapter's random output.
    """
    unet = models.diffusion.unet
    device = next(unet.parameters()).device
    with torch.random.fork_rng(devices=_fork_rng_devices(device)):
        torch.manual_seed(config["seed"])
        params = set_calibration_mode(
            unet, config["mode"], config["lora_rank"], config["lora_alpha"], config["lora_targets"]
        )
        if config["mode"] == "lora":  # LoRA weights train in float32 whatever the UNet dtype
            for p in params:
                p.data = p.data.float()
        captioner = make_captioner(models, config, init_tokens=empty_prompt_tokens(models)).to(device)
    if config["mode"] == "none":  # the pretrained UNet used directly: conditioned on the empty prompt alone
        with torch.no_grad():
            captioner.adapter[-1].weight.zero_()
            captioner.adapter[-1].bias.zero_()
    student = Student(unet=unet, captioner=captioner, clip=models.clip, vae=models.diffusion.vae, config=config)
    return student, params


def save_student(out_dir: str | Path, student: Student) -> Path:
    """Write the student's trainable parts and ``student.json`` into ``out_dir`` atomically (the layout in the
    module docstring); :func:`load_student` reads it back."""
    mode = student.config["mode"]
    with atomic_dir(out_dir) as tmp:
        save_adapter(student.captioner, tmp / "adapter.safetensors")
        if mode == "lora":
            save_file(lora_state_dict(student.unet), str(tmp / "lora.safetensors"))
        elif mode == "full":
            student.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "student.json").write_text(json.dumps(student.config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def load_student(models: LoadedModels, calibrate_dir: str | Path = paths.CALIBRATE) -> Student:
    """Rebuild the calibrated student written by the ``calibrate`` stage (frozen, eval mode).

    Refuses a calibration made with another teacher or CLIP model (ValueError naming both identities).
    """
    calibrate_dir = Path(calibrate_dir)
    config_path = calibrate_dir / "student.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: run the `calibrate` stage first (dvc repro calibrate)")
    config = json.loads(config_path.read_text())
    for key, current in (("teacher", models.teacher_identity), ("clip", models.clip_identity)):
        if config[key] != current:
            raise ValueError(
                f"{calibrate_dir}: calibrated with {key} {config[key]}, but the loaded {key} is "
                f"{current}; rerun `calibrate` (dvc repro calibrate)"
            )
    unet = models.diffusion.unet
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    if config["mode"] == "lora":
        from peft.utils import set_peft_model_state_dict

        state = load_file(str(calibrate_dir / "lora.safetensors"))
        lora = load_lora_state_dict(unet, state, config["lora_rank"], config["lora_alpha"], config["lora_targets"])
        if any(q.dtype != torch.float32 for q in lora):
            # half UNet: peft created (and loaded) the adapter in the UNet's dtype; keep the float32 weights the
            # calibration trained and saved (as build_student does), loaded again without rounding
            for q in lora:
                q.data = q.data.float()
            set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    elif config["mode"] == "full":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(calibrate_dir / "unet", local_files_only=True, torch_dtype=dtype)
        unet.to(device)
    unet.requires_grad_(False).eval()
    captioner = make_captioner(models, config)
    load_adapter(captioner, calibrate_dir / "adapter.safetensors")
    captioner.to(device).requires_grad_(False).eval()
    return Student(unet=unet, captioner=captioner, clip=models.clip, vae=models.diffusion.vae, config=config)


def student_condition(student: Student, images01: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> conditioning tokens [B,T,D] float32 (``captioner(clip.preprocess(x))``).

    Differentiable w.r.t. the adapter when its parameters require grad (CLIP itself is always frozen).
    """
    device = student.captioner.token_bias.device
    return student.captioner(student.clip.preprocess(images01.to(device)))


def student_maps(
    student: Student,
    capture: AttentionCapture,
    images01: torch.Tensor,
    size: tuple[int, int],
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Student cross-attention maps at t = 0: [B,3,H,W] in [0,1] -> [B,T,ha,wa] float32 (``size`` = (ha, wa)).

    ``capture`` must be installed on ``student.unet`` (``keep_graph=True`` to train through the maps);
    ``latents`` (the clean VAE latents [B,C,h,w]) are computed from the images when not given.
    """
    param = next(student.unet.parameters())
    if latents is None:
        latents = encode_images(student.vae, vae_range(images01))
    cond = student_condition(student, images01)
    t = torch.zeros(latents.shape[0], dtype=torch.long, device=param.device)
    with capture.recording():
        student.unet(latents.to(param.device, param.dtype), t, encoder_hidden_states=cond.to(param.dtype))
        maps = capture.maps(size)
    capture.clear()
    return maps
