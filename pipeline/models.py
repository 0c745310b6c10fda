"""Resolve the models a run uses and record their identities.

The ``models`` stage writes ``artifacts/models/manifest.json``:

* ``model.preset: tiny`` (default): the embedded teacher shipped in ``teacher/weights`` (a tiny text-to-image
  model trained on the synthetic scenes, see ``teacher/weights/MODEL_CARD.md``) is copied into
  ``artifacts/models/diffusion``, and the embedded CLIP shipped in ``teacher/clip`` (a tiny open_clip model
  pre-trained on other synthetic scenes, see ``teacher/clip/MODEL_CARD.md``) into ``artifacts/models/clip``;
* ``model.preset: tiny-random``: the tiny diffusion models and the tiny open_clip model are built from configs
  with ``model.seed`` (random init: fastest, but their maps and features mean nothing);
* ``model.preset: sd``: the manifest points at the user's Stable Diffusion folder and open_clip checkpoint.

Every later stage loads through :func:`load_models`, i.e. through the libraries' own loaders, and records the
identities in its artifacts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import paths
from pipeline.hashing import file_digest
from pipeline.io import atomic_write_json
from spade_core.calibration.clip import ClipModels, build_tiny_clip, load_clip
from spade_core.diffusion.models import (
    COMPONENTS,
    DiffusionModels,
    build_tiny_diffusion_models,
    load_diffusion_models,
    model_identity,
)

TINY_CLIP_ARCH = "spade-tiny-clip"


@dataclass
class LoadedModels:
    diffusion: DiffusionModels
    clip: ClipModels
    manifest: dict[str, Any]

    @property
    def teacher_identity(self) -> str:
        return self.manifest["diffusion"]["identity"]

    @property
    def clip_identity(self) -> str:
        return self.manifest["clip"]["identity"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def weights_path(value: str) -> Path:
    """``model.sd_path`` / ``model.clip_checkpoint`` as a path: ``~`` expanded, relative ones under the repository
    (where ``dvc.yaml`` resolves the same strings as deps of the ``models`` stage)."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else paths.REPO_ROOT / path).resolve()


def copy_embedded_teacher(dest: Path, source: Path = paths.TEACHER_WEIGHTS) -> Path:
    """Copy the shipped teacher's components (diffusers layout) to ``dest``, replacing what is there."""
    missing = [c for c in COMPONENTS if not (source / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"model.preset=tiny: the embedded teacher {source} lacks {missing}; restore it from git "
            "(`git checkout -- teacher/weights`), retrain it (`spade train-teacher`), or use model.preset=tiny-random"
        )
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.md", "training.json"))
    return dest


def copy_embedded_clip(dest: Path, checkpoint: Path | None = None, source: Path = paths.EMBEDDED_CLIP) -> Path:
    """Copy the shipped CLIP's architecture JSON (from ``source``) and ``checkpoint`` (default: the shipped one) to
    ``dest``; returns the copied checkpoint's path."""
    names = (f"{TINY_CLIP_ARCH}.json", f"{TINY_CLIP_ARCH}.safetensors")
    files = [source / names[0], checkpoint or source / names[1]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"model.preset=tiny: the embedded CLIP lacks {missing}; restore it from git "
            "(`git checkout -- teacher/clip`), retrain it (`spade train-clip`), or use model.preset=tiny-random"
        )
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f, name in zip(files, names):
        shutil.copyfile(f, dest / name)
    return dest / names[1]


def build_manifest(model_params: Any, out_dir: Path = paths.MODELS) -> dict[str, Any]:
    """Build (tiny presets) or locate (sd) the models and return the manifest written to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    preset = model_params.preset
    if preset in ("tiny", "tiny-random"):
        diff_dir = out_dir / "diffusion"
        if preset == "tiny":
            copy_embedded_teacher(diff_dir, weights_path(model_params.sd_path))
        else:
            shutil.rmtree(diff_dir, ignore_errors=True)
            build_tiny_diffusion_models(diff_dir, seed=model_params.seed)
        clip_dir = out_dir / "clip"
        if preset == "tiny":
            clip_ckpt = copy_embedded_clip(clip_dir, weights_path(model_params.clip_checkpoint))
        else:
            shutil.rmtree(clip_dir, ignore_errors=True)
            clip_ckpt = build_tiny_clip(clip_dir, seed=model_params.seed)
        clip_arch = str(clip_dir / f"{TINY_CLIP_ARCH}.json")
        diffusion = {"path": "diffusion", "relative": True}
        clip = {"arch": clip_arch.replace(str(out_dir) + "/", ""), "checkpoint": Path(clip_ckpt).name, "relative": True}
    else:
        sd, ckpt = weights_path(model_params.sd_path), weights_path(model_params.clip_checkpoint)
        if not sd.is_dir():
            raise FileNotFoundError(f"model.sd_path={sd}: not a directory (need a diffusers-layout SD folder)")
        if not ckpt.is_file():
            raise FileNotFoundError(f"model.clip_checkpoint={ckpt}: file not found")
        diff_dir, clip_ckpt = sd, ckpt
        diffusion = {"path": str(sd), "relative": False}
        clip = {"arch": model_params.clip_arch, "checkpoint": str(ckpt), "relative": False}
    diffusion["identity"] = model_identity(diff_dir)
    clip["identity"] = file_digest(Path(clip_ckpt))
    manifest = {
        "preset": preset,
        "seed": model_params.seed,
        "image_size": model_params.image_size,
        "diffusion": diffusion,
        "clip": clip,
    }
    atomic_write_json(out_dir / "manifest.json", manifest, sort_keys=True)
    return manifest


def read_manifest(models_dir: Path = paths.MODELS) -> dict[str, Any]:
    path = models_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the `models` stage first (dvc repro models)")
    return json.loads(path.read_text())


def check_external_identity(manifest: dict[str, Any]) -> None:
    """Refuse external weights (``model.preset: sd``) that changed since the ``models`` stage recorded their
    identity: DVC does not track a folder outside the project, so a weight file replaced in place would
    otherwise leave every later artifact stale and passing its checks. (Weights inside ``artifacts/models`` are a
    DVC output: DVC sees those.)"""
    d, c = manifest["diffusion"], manifest["clip"]
    current = {}
    if not d["relative"]:
        current["model.sd_path"] = (d["path"], d["identity"], model_identity(Path(d["path"])))
    if not c["relative"]:
        current["model.clip_checkpoint"] = (c["checkpoint"], c["identity"], file_digest(Path(c["checkpoint"])))
    changed = {k: v for k, v in current.items() if v[1] != v[2]}
    if changed:
        key, (path, recorded, now) = next(iter(changed.items()))
        raise ValueError(f"{key}={path}: the weights changed since the models stage recorded them (identity "
                         f"{recorded}, now {now}); rerun it and what depends on it: dvc repro -f models && dvc repro")


def load_models(models_dir: Path = paths.MODELS, device: str = "cpu", dtype: str = "float32") -> LoadedModels:
    """Load the diffusion models and CLIP named by the manifest in ``models_dir`` (external weights are checked
    against the identities the manifest recorded: :func:`check_external_identity`)."""
    manifest = read_manifest(models_dir)
    check_external_identity(manifest)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    d, c = manifest["diffusion"], manifest["clip"]
    diff_path = models_dir / d["path"] if d["relative"] else Path(d["path"])
    diffusion = load_diffusion_models(diff_path, device=dev, dtype=dt)
    arch = str(models_dir / c["arch"]) if c["relative"] else c["arch"]
    ckpt = models_dir / "clip" / c["checkpoint"] if c["relative"] else Path(c["checkpoint"])
    clip = load_clip(arch, ckpt, device=dev)
    return LoadedModels(diffusion=diffusion, clip=clip, manifest=manifest)
