"""Stable Diffusion components from a diffusers-layout folder, the tiny preset, and encoding helpers.

One loading path: :func:`load_diffusion_models` reads a Stable Diffusion 1.x/2.x folder with the libraries'
own loaders, offline. :func:`build_tiny_diffusion_models` builds small random models from configs with a fixed
seed and saves them in exactly that layout (safetensors), so the tiny preset loads through the same code::

    model_index.json
    unet/{config.json, diffusion_pytorch_model.safetensors}      UNet2DConditionModel
    vae/{config.json, diffusion_pytorch_model.safetensors}       AutoencoderKL
    text_encoder/{config.json, model.safetensors}                transformers CLIPTextModel
    tokenizer/{vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json}   CLIPTokenizer
    scheduler/scheduler_config.json                              DDIMScheduler (SD schedule)

The tokenizer files are generated offline from open_clip's shipped CLIP BPE file (same vocabulary as
``openai/clip-vit-large-patch14``'s tokenizer, same ids as ``open_clip.tokenizer.SimpleTokenizer``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..hashing import update_with_file
from .schedulers import SD_SCHEDULER_CONFIG

COMPONENTS: dict[str, tuple[str, ...]] = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

TINY_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
TINY_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 32, 32), layers_per_block=1,
    latent_channels=4, norm_num_groups=8, sample_size=128, scaling_factor=0.18215,
)
TINY_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


@dataclass
class DiffusionModels:
    """The teacher's parts. ``scheduler_config``: a diffusers DDIM config dict; ``identity``: the folder's
    :func:`model_identity`; ``path``: the folder loaded."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    identity: str
    path: Path


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"diffusion model folder {path} does not exist (need a diffusers-layout SD folder)")
    for sub, files in COMPONENTS.items():
        if not (path / sub).is_dir():
            raise FileNotFoundError(f"{path}: missing subfolder '{sub}/' of the diffusers layout")
        for f in files:
            if not (path / sub / f).is_file():
                raise FileNotFoundError(f"{path}: missing file '{sub}/{f}'")
        if sub in ("unet", "vae", "text_encoder") and not any(
                p.suffix in _WEIGHT_SUFFIXES for p in (path / sub).iterdir()):
            raise FileNotFoundError(f"{path}: no weights (*.safetensors or *.bin) in '{sub}/'")


def load_diffusion_models(path: str | Path, device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> DiffusionModels:
    """Load UNet, VAE, CLIP text encoder, tokenizer and scheduler config from a diffusers-layout folder, offline.

    ``dtype`` (default: as stored) applies to the UNet, VAE and text encoder; all are put in eval mode.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    _check_folder(path)
    kw = {"local_files_only": True} if dtype is None else {"local_files_only": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    scheduler_config = dict(DDIMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True).config)
    text_encoder.to(dtype=dtype)
    for m in (unet, vae, text_encoder):
        m.to(device=device).eval()
    return DiffusionModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler_config=scheduler_config, identity=model_identity(path), path=path)


def write_clip_tokenizer_files(out_dir: str | Path, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``/``merges.txt`` (+ configs) for transformers' CLIPTokenizer from open_clip's BPE file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
              "errors": "replace", **special}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def build_tiny_diffusion_models(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny UNet (16x16 latents), VAE (128 px, 8x down), CLIP text encoder (width 32) and tokenizer
    from configs with ``seed`` and save them in the diffusers layout (see module doc). Same seed, same bytes.
    The global RNG state is left untouched."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    write_clip_tokenizer_files(out / "tokenizer", model_max_length=TINY_TEXT_CONFIG["max_position_embeddings"])
    DDIMScheduler(**SD_SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
             "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out


_IDENTITY_CACHE: dict[tuple, str] = {}


def _hash_file(h: Any, path: Path) -> None:
    if path.suffix == ".json":  # canonical JSON without library-version keys (`_diffusers_version`, ...)
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"}
        h.update(json.dumps(data, sort_keys=True).encode())
    else:
        update_with_file(h, path)


def model_identity(models_or_dir: DiffusionModels | str | Path) -> str:
    """Stable content hash (16 hex digits of a sha256) of a diffusers-layout folder: every ``.safetensors``,
    ``.bin``, ``.txt`` and ``.json`` file of the component subfolders, by relative path; JSON compared without
    library-version keys. Used to refuse mixing artifacts made with different teachers."""
    if isinstance(models_or_dir, DiffusionModels):
        return models_or_dir.identity
    root = Path(models_or_dir)
    _check_folder(root)
    files = sorted(p for sub in COMPONENTS for p in (root / sub).rglob("*")
                   if p.is_file() and p.suffix in (*_WEIGHT_SUFFIXES, ".txt", ".json") and not p.name.startswith("."))
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _IDENTITY_CACHE:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            _hash_file(h, p)
        _IDENTITY_CACHE[key] = h.hexdigest()[:16]
    return _IDENTITY_CACHE[key]


@torch.no_grad()
def encode_images(vae: nn.Module, images: Tensor) -> Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> latents [B, C, H/f, W/f] float32: posterior mode times the scaling."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    param = next(vae.parameters())
    latents = vae.encode(images.to(param.device, param.dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """Latents [B, C, h, w] (scaled) -> images [B, 3, H, W] float32 clamped to [-1, 1]."""
    param = next(vae.parameters())
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / vae.config.scaling_factor + shift
    return vae.decode(z.to(param.device, param.dtype)).sample.float().clamp(-1, 1)


@torch.no_grad()
def encode_token_ids(text_encoder: nn.Module, token_ids: Tensor) -> Tensor:
    """Token ids [B, T] -> ``encoder_hidden_states`` [B, T, D] float32 (last hidden state)."""
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must be [B, T], got {tuple(token_ids.shape)}")
    device = next(text_encoder.parameters()).device
    return text_encoder(token_ids.to(device))[0].float()


def encode_prompts(text_encoder: nn.Module, tokenizer: Any, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts -> (cond [B, T, D] float32, token_ids [B, T] long, lengths [B] incl. start/end tokens),
    padded/truncated to ``tokenizer.model_max_length``."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    tok = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    ids = tok["input_ids"].long()
    return encode_token_ids(text_encoder, ids), ids, tok["attention_mask"].sum(dim=1).long()
