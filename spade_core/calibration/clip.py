"""open_clip models loaded from local files: text classifiers and dense image features.

Real runs name a built-in open_clip architecture (``"ViT-B-32"``, ``"ViT-L-14-336"``, ...) and a local
checkpoint file in open_clip's state-dict format (``.safetensors``, ``.bin`` or ``.pth``; open_clip's
``load_checkpoint`` reads safetensors directly and calls ``torch.load`` with ``weights_only=True``). The tiny
preset writes an architecture JSON and a seeded safetensors checkpoint with :func:`build_tiny_clip` and is loaded
back through the same :func:`load_clip` call, the JSON path standing in for the architecture name.

Nothing here touches the network: a checkpoint is always a file path (never a pretrained tag), and the
tokenizer is open_clip's ``SimpleTokenizer``, whose BPE vocabulary ships inside the package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from safetensors.torch import save_file
from torch import nn

from ..hashing import file_digest

TINY_CLIP_NAME = "spade-tiny-clip"
TINY_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 128, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Prompt templates for open-vocabulary classifiers (averaged, CLIP-style prompt ensembling). Object templates
# follow CLIP's ImageNet practice; predicate templates embed the predicate between two placeholder arguments so
# that "on" and "in front of" are read as relations rather than as bare words.
OBJECT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "{}")
PREDICATE_TEMPLATES: tuple[str, ...] = ("{}", "a photo of something {} something.")


@dataclass
class ClipModels:
    """A loaded, frozen open_clip model and what is needed to feed it.

    ``mean``/``std`` are the per-channel normalisation of the image tower, ``image_size`` its (H, W) input size,
    ``embed_dim`` the joint embedding width E and ``identity`` a sha256 over the architecture config and the
    checkpoint bytes (for refusing caches made with another model).
    """

    model: nn.Module
    tokenizer: object
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]
    embed_dim: int
    identity: str

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] RGB in [0,1] -> [B,3,h,w] resized to ``image_size`` (bilinear, antialiased), normalised."""
        return preprocess_images(images, self.mean, self.std, self.image_size)


def preprocess_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                      size: Sequence[int]) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> [B,3,*size] float, resized (bilinear, antialiased) if needed and normalised
    with the tower's per-channel ``mean``/``std``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected [B,3,H,W], got {tuple(images.shape)}")
    x = images.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(tuple(mean), device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write ``spade-tiny-clip.json`` and ``spade-tiny-clip.safetensors`` into ``out_dir``.

    The weights come from open_clip's own initialisation under ``torch.manual_seed(seed)`` (the global RNG is
    restored afterwards); the same seed gives a byte-identical checkpoint. Returns the checkpoint path; the config
    sits beside it (``checkpoint.with_suffix(".json")``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2, sort_keys=True) + "\n")
    _register_config(config_path)
    model = tiny_clip_model(seed)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    checkpoint = out_dir / f"{TINY_CLIP_NAME}.safetensors"
    # a single metadata key: safetensors writes metadata from a hash map, so several keys come out in any order
    save_file(state, str(checkpoint), metadata={"spade": json.dumps({"architecture": TINY_CLIP_NAME, "seed": seed})})
    return checkpoint


def tiny_clip_model(seed: int = 0) -> nn.Module:
    """The tiny open_clip model at initialisation under ``torch.manual_seed(seed)`` (the global RNG is restored
    afterwards), on the CPU, in train mode: what :func:`build_tiny_clip` writes and ``spade train-clip`` starts
    from. Registers :data:`TINY_CLIP_CONFIG` with open_clip first."""
    with tempfile.TemporaryDirectory(prefix="spade-clip-config-") as tmp:
        config_path = Path(tmp) / f"{TINY_CLIP_NAME}.json"
        config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2, sort_keys=True) + "\n")
        _register_config(config_path)
    logger = logging.getLogger()  # open_clip warns on the root logger that no pretrained weights were loaded:
    level = logger.level  # a random init is what is asked for here
    logger.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(TINY_CLIP_NAME, pretrained=None, device="cpu")
    finally:
        logger.setLevel(level)


def _register_config(config_path: Path) -> str:
    """Add an architecture JSON to open_clip's registry (name = file stem); the last registration wins."""
    cfg = json.loads(config_path.read_text())
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"model_name_or_config: {config_path} lacks embed_dim/vision_cfg/text_cfg")
    open_clip.add_model_config(config_path)
    name = config_path.stem
    if open_clip.get_model_config(name) != cfg:
        raise ValueError(f"model_name_or_config: open_clip registered another config under the name {name!r}")
    return name


def load_clip(
    model_name_or_config: str | Path, checkpoint: str | Path, device: str | torch.device | None = None
) -> ClipModels:
    """Load a frozen open_clip model (eval mode, ``requires_grad`` False) from a local checkpoint file.

    ``model_name_or_config`` is a built-in open_clip architecture name or the path of an architecture JSON (as
    written by :func:`build_tiny_clip`). Only standard open_clip ViT image towers are accepted (no timm/ResNet
    towers, no attentional pooling), because :func:`image_features` reads their patch tokens.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {checkpoint}")
    spec = str(model_name_or_config)
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"model_name_or_config: no such config file {spec}")
        name = _register_config(Path(spec))
    else:
        name = spec.replace("/", "-")
        if name not in open_clip.list_models():
            raise ValueError(f"model_name_or_config: unknown open_clip architecture {spec!r}")
    config = open_clip.get_model_config(name)
    try:
        model = open_clip.create_model(name, pretrained=str(checkpoint), device=device or "cpu")
    except (RuntimeError, AssertionError, KeyError) as err:
        raise ValueError(f"checkpoint: {checkpoint} does not fit the architecture {name!r}: {err}") from err
    model.eval().requires_grad_(False)
    visual = _vision_tower(model)
    identity = hashlib.sha256(
        (json.dumps(config, sort_keys=True) + file_digest(checkpoint, length=None)).encode()
    ).hexdigest()
    pp = visual.preprocess_cfg
    return ClipModels(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        mean=tuple(float(v) for v in pp["mean"]),
        std=tuple(float(v) for v in pp["std"]),
        image_size=tuple(int(v) for v in visual.image_size),
        embed_dim=int(visual.output_dim),
        identity=identity,
    )


def _vision_tower(clip: ClipModels | nn.Module) -> VisionTransformer:
    """Return the open_clip ViT image tower of a ClipModels / CLIP model / tower, checking it has patch tokens."""
    visual = clip.model.visual if isinstance(clip, ClipModels) else getattr(clip, "visual", clip)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"clip: expected an open_clip VisionTransformer image tower, got {type(visual).__name__}")
    if visual.attn_pool is not None or visual.proj is None:
        raise ValueError("clip: image towers with attentional pooling or without a projection are not supported")
    return visual


def name_embeddings(model: nn.Module, tokenizer: object, names: Sequence[str],
                    templates: Sequence[str] = OBJECT_TEMPLATES, chunk: int = 256) -> torch.Tensor:
    """Prompt-ensembled text embeddings [C, E] of ``names`` (L2-normalised), differentiable.

    Each name is inserted into every template (``"{}"`` placeholder), encoded by the open_clip ``model``'s text
    tower, L2-normalised, averaged over the templates and normalised again (CLIP prompt ensembling). Gradients
    flow when enabled (``spade train-clip`` trains the text tower through it); :func:`encode_text` is the frozen
    use.
    """
    if len(names) == 0:
        raise ValueError("names: empty list")
    if len(templates) == 0 or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"templates: each template needs exactly one '{{}}' placeholder, got {list(templates)}")
    device = next(model.parameters()).device
    prompts = [t.format(n) for n in names for t in templates]
    feats = []
    for start in range(0, len(prompts), chunk):
        tokens = tokenizer(prompts[start : start + chunk]).to(device)
        feats.append(model.encode_text(tokens, normalize=True).float())
    emb = torch.cat(feats).view(len(names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def encode_text(
    clip: ClipModels, names: Sequence[str], templates: Sequence[str] = OBJECT_TEMPLATES, chunk: int = 256
) -> torch.Tensor:
    """Open-vocabulary classifier weights of a frozen model: [C, E], L2-normalised (:func:`name_embeddings`).

    Use :data:`OBJECT_TEMPLATES` for categories and :data:`PREDICATE_TEMPLATES` for predicates.
    """
    return name_embeddings(clip.model, clip.tokenizer, names, templates, chunk)


def image_features(clip: ClipModels | nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled and dense CLIP image features in the joint embedding space, from one forward pass.

    images: [B,3,H,W], already normalised, (H, W) = the tower's ``image_size``.
    Returns ``pooled`` [B,E] (exactly ``model.encode_image(images)``, unnormalised) and ``dense`` [B,E,h,w],
    (h, w) = the patch grid: the last block's patch tokens through ``ln_post`` and ``proj``, i.e. every patch
    treated the way the class token is. No normalisation is applied; gradients flow if the caller enables them.
    """
    visual = _vision_tower(clip)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected [B,3,H,W], got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != tuple(visual.image_size):
        raise ValueError(f"images: expected spatial size {tuple(visual.image_size)}, got {tuple(images.shape[-2:])}")
    out = visual.forward_intermediates(images, indices=1, normalize_intermediates=True, output_fmt="NCHW")
    tokens = out["image_intermediates"][-1]  # [B, width, h, w], ln_post applied
    dense = torch.einsum("bchw,ce->behw", tokens, visual.proj)
    return out["image_features"], dense
