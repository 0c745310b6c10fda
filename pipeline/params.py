"""The one typed schema of ``params.yaml``.

Every stage reads its parameters through :func:`load_params`, which validates the whole file against
:class:`Params` (pydantic v2): unknown keys, wrong types and out-of-range values fail at load time with a
message naming the dotted key and the constraint. Every constraint that can be checked from the file alone
is checked here, not in a later stage (``model.image_size`` a multiple of the VAE factor 8, ``model.hidden_dim``
divisible by ``model.num_heads``, ``calibrate.micro_batch`` dividing ``calibrate.batch_size``,
``calibrate.read_block`` dividing ``invert.shard_size`` or a multiple of it). A file missing a whole section
(or empty) runs on the defaults below, with a warning naming the section on stderr. A stage then sees only the
keys it declares (see :class:`ScopedParams`), so ``dvc.yaml`` can list exactly the parameters each stage depends on.

This schema is the one source of default parameter values: its defaults equal the committed ``params.yaml``
(``tests/pipeline/test_params.py`` keeps them equal), and the model configs built from it
(``pipeline.psg_model.psg_config``) take every value they expose from here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TINY_SD_PATH = "teacher/weights"  # the embedded teacher (diffusers layout), the default model.sd_path
TINY_CLIP_CHECKPOINT = "teacher/clip/spade-tiny-clip.safetensors"  # the embedded CLIP, model.clip_checkpoint
VAE_FACTOR = 8  # spatial downsampling of the VAE of both presets (tiny and SD): image side / latent side


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------- data
VG_PATH_KEYS = ("vg_h5", "vg_dicts", "vg_image_data", "image_root")  # every one needed by data.source=vg


def missing_vg_paths(data: Any) -> list[str]:
    """The dotted ``data.*`` keys ``data.source=vg`` needs that ``data`` leaves empty (for the schema and for
    ``prepare``, which may be called with a plain namespace)."""
    return [f"data.{k}" for k in VG_PATH_KEYS if not getattr(data, k, None)]


class DataParams(_Section):
    source: Literal["synthetic", "psg", "vg", "synthetic-vg"] = "synthetic"
    split: Literal["closed", "ovr", "ovdr"] = "closed"
    on_error: Literal["fail", "skip"] = "fail"
    psg_json: str | None = None
    image_root: str | None = None
    vg_h5: str | None = None
    vg_dicts: str | None = None
    vg_image_data: str | None = None
    vg_filter_non_overlap: bool = True

    @model_validator(mode="after")
    def _source_paths(self) -> DataParams:
        if self.source == "psg" and (not self.psg_json or not self.image_root):
            raise ValueError("data.source=psg needs data.psg_json and data.image_root")
        missing = missing_vg_paths(self) if self.source == "vg" else []
        if missing:
            raise ValueError(
                f"data.source=vg needs data.vg_h5, data.vg_dicts, data.vg_image_data and data.image_root; "
                f"missing: {', '.join(missing)}"
            )
        return self


# -------------------------------------------------------------------------------------------- model
class RGTParams(_Section):
    num_blocks: int = Field(8, ge=0, le=64)  # 0: no RGT (the instance features go straight to S)
    use_lcnl: bool = True
    use_lcnnl: bool = True
    use_lcl: bool = True


class GraphParams(_Section):
    dilation: int = Field(2, ge=0, le=32)
    semantic_threshold: float = Field(0.8, ge=-1.0, le=1.0)


class RelationParams(_Section):
    eta: float = Field(0.65, ge=-1.0, le=1.0)
    max_pairs: int = Field(32, ge=1, le=4096)
    min_pairs: int = Field(8, ge=0, le=4096)
    duplicate_iou: float | None = Field(0.7, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _min_le_max(self) -> RelationParams:
        if self.min_pairs > self.max_pairs:
            raise ValueError(f"model.relation.min_pairs={self.min_pairs} must be <= max_pairs={self.max_pairs}")
        return self


class ModelParams(_Section):
    preset: Literal["tiny", "tiny-random", "sd"] = "tiny"
    # weight locations, relative to the repository or absolute: dvc.yaml lists both as deps of `models`, so DVC
    # sees a weight file change in place (preset tiny copies the embedded models from these two paths)
    sd_path: str = Field(TINY_SD_PATH, min_length=1)
    clip_arch: str | None = None
    clip_checkpoint: str = Field(TINY_CLIP_CHECKPOINT, min_length=1)
    seed: int = Field(0, ge=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    image_size: int = Field(128, ge=32, le=2048)
    feature_blocks: list[int] | None = None  # null: decoder blocks if SD-shaped, else every third
    backbone: Literal["unet", "clip"] = "unet"  # clip: the VLM-only baseline (frozen dense CLIP features)
    pixel_stride: int | None = Field(None, ge=1, le=64)
    hidden_dim: int = Field(64, ge=8, le=2048)
    num_queries: int = Field(16, ge=1, le=1000)
    num_heads: int = Field(4, ge=1)
    decoder_layers: int = Field(3, ge=1, le=12)
    box_source: Literal["head", "mask"] = "head"  # box data (VG): DETR head regression | tight box of the mask
    rgt: RGTParams = RGTParams()
    graph: GraphParams = GraphParams()
    relation: RelationParams = RelationParams()

    @field_validator("image_size")
    @classmethod
    def _vae_multiple(cls, v: int) -> int:
        if v % VAE_FACTOR:
            raise ValueError(f"must be a multiple of the VAE downsampling factor {VAE_FACTOR}")
        return v

    @model_validator(mode="after")
    def _weights(self) -> ModelParams:
        if self.preset == "sd" and (
            self.sd_path == TINY_SD_PATH or not self.clip_arch or self.clip_checkpoint == TINY_CLIP_CHECKPOINT
        ):
            raise ValueError("model.preset=sd needs model.sd_path, model.clip_arch and model.clip_checkpoint "
                             "(the defaults name the embedded tiny models)")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"model.hidden_dim={self.hidden_dim} must be divisible by model.num_heads={self.num_heads}"
            )
        return self


# ------------------------------------------------------------------------------------------ prepare
class SyntheticParams(_Section):
    num_train: int = Field(300, ge=1)
    num_test: int = Field(100, ge=1)
    image_size: int = Field(128, ge=32, le=1024)
    min_objects: int = Field(2, ge=1, le=12)
    max_objects: int = Field(5, ge=1, le=12)
    image_format: Literal["png", "jpg"] = "png"  # jpg: data.source=synthetic-vg only (checked by prepare)

    @model_validator(mode="after")
    def _objects(self) -> SyntheticParams:
        if self.min_objects > self.max_objects:
            raise ValueError("prepare.synthetic.min_objects must be <= prepare.synthetic.max_objects")
        return self


class PrepareParams(_Section):
    seed: int = Field(0, ge=0)
    synthetic: SyntheticParams = SyntheticParams()


# ------------------------------------------------------------------------------------------- invert
class InvertParams(_Section):
    method: Literal["ddim", "belm"] = "belm"
    num_steps: int = Field(10, ge=2, le=1000)
    noise: Literal["inverted", "random"] = "inverted"
    regenerate: bool = False
    batch_size: int = Field(8, ge=1)
    shard_size: int = Field(128, ge=1)
    attn_resolution: int | None = Field(None, ge=1)
    attn_layers: list[Literal["down", "mid", "up"]] = Field(["down", "mid", "up"], min_length=1)
    store_latents: bool = False
    seed: int = Field(0, ge=0)
    on_mismatch: Literal["fail", "replace"] = "fail"

    @field_validator("attn_layers")
    @classmethod
    def _distinct_parts(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"lists a UNet part twice: {v}")
        return v


# ---------------------------------------------------------------------------------------- calibrate
class CalibrateParams(_Section):
    mode: Literal["lora", "full", "none"] = "lora"
    lora_rank: int = Field(4, ge=1, le=256)
    lora_alpha: float = Field(4.0, gt=0)
    lora_targets: list[str] = ["attn2.to_k", "attn2.to_v"]
    lam: float = Field(1.0, gt=0, alias="lambda")
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0)
    steps: int = Field(200, ge=0)
    batch_size: int = Field(8, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    num_workers: int = Field(1, ge=0)
    seed: int = Field(0, ge=0)
    adapter_hidden_dim: int = Field(64, ge=1, le=16384)
    micro_batch: int | None = Field(None, ge=1)
    read_block: int | None = Field(None, ge=1)
    shuffle_window: int = Field(2, ge=1)
    cache_latents: bool = True

    @model_validator(mode="after")
    def _micro_batch(self) -> CalibrateParams:
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ValueError(
                f"calibrate.micro_batch={self.micro_batch} must divide calibrate.batch_size={self.batch_size}"
            )
        return self


# -------------------------------------------------------------------------------------------- train
class LossWeights(_Section):
    rel: float = Field(1.0, ge=0)
    rqc: float = Field(0.6, ge=0)
    mask: float = Field(1.0, ge=0)


class TrainParams(_Section):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_drop_at: float = Field(0.75, gt=0, le=1.0)
    grad_clip: float = Field(1.0, gt=0)
    loss_weights: LossWeights = LossWeights()
    no_object_weight: float = Field(0.5, gt=0, le=1.0)
    use_rqc: bool = True
    rqc_pairs: Literal["matched", "detected"] = "detected"
    cache_features: bool = True
    seed: int = Field(0, ge=0)


# ----------------------------------------------------------------------------------------- evaluate
class EvaluateParams(_Section):
    ks: list[int] = [20, 50, 100]
    iou_thr: float = Field(0.5, gt=0, le=1.0)
    max_triplets: int = Field(100, ge=1)
    skip_empty_predictions: bool = True
    batch_size: int = Field(8, ge=1)
    num_visualisations: int = Field(4, ge=0)
    alpha: float = Field(0.34, ge=0.0, le=1.0)
    use_diffusion_logits: bool = True
    use_pooled_logits: bool = True
    all_pairs: bool = False  # not the paper's method: query every detected pair at test, not only eq. 13's
    chance_draws: int = Field(10, ge=1)  # random draws the chance baseline's recalls are averaged over

    @model_validator(mode="after")
    def _ks(self) -> EvaluateParams:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError("evaluate.ks must be a non-empty list of positive integers")
        if not (self.use_diffusion_logits or self.use_pooled_logits):
            raise ValueError("at least one of evaluate.use_diffusion_logits / evaluate.use_pooled_logits must be true")
        return self


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    prepare: PrepareParams = PrepareParams()
    invert: InvertParams = InvertParams()
    calibrate: CalibrateParams = CalibrateParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _read_block(self) -> Params:
        block, shard = self.calibrate.read_block, self.invert.shard_size
        if block is not None and shard % block and block % shard:
            raise ValueError(
                f"calibrate.read_block={block} must divide the store's shard size {shard} (invert.shard_size) "
                "or be a multiple of it"
            )
        return self


class ParamsError(ValueError):
    """A params file that does not satisfy the schema; the message names file, key and constraint."""


def _format_errors(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        given = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "<params>") -> Params:
    """Validate a mapping (as read from YAML) against the schema."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(source, err)) from None


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def warn_missing_sections(raw: Any, source: str) -> list[str]:
    """The schema sections absent from ``raw``; named once per (file, sections) in a warning on stderr.

    A missing section (or an empty file) runs on the schema defaults, which equal the committed ``params.yaml``;
    the warning says so, because a section dropped by mistake would otherwise go unnoticed.
    """
    present = raw if isinstance(raw, dict) else {}
    missing = [name for name in Params.model_fields if name not in present]
    key = (source, tuple(missing))
    if missing and key not in _WARNED:
        _WARNED.add(key)
        what = "is empty" if not present else f"has no section {', '.join(missing)}"
        print(f"warning: {source}: {what}; using the schema defaults (equal to the committed params.yaml)",
              file=sys.stderr)
    return missing


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file. Raises :class:`ParamsError` naming the file and key; a missing
    section is named in a warning (:func:`warn_missing_sections`)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: params file not readable: {err}") from None
    except RecursionError:
        raise ParamsError(f"{path}: not valid YAML: nested too deeply") from None
    params = parse_params(raw, str(path))
    warn_missing_sections(raw, str(path))
    return params


def default_params_dict() -> dict[str, Any]:
    """The defaults as a plain mapping (YAML-ready, aliases such as ``lambda`` used)."""
    return Params().model_dump(by_alias=True)


class UndeclaredParamError(KeyError):
    """A stage read a parameter its ``dvc.yaml`` entry does not declare."""


class ScopedParams:
    """Read-only view of :class:`Params` that allows only the declared dotted keys (and their children).

    ``ScopedParams(p, ["data.source", "invert"]).invert.method`` works; ``.train`` raises
    :class:`UndeclaredParamError`, so a stage cannot silently depend on a parameter DVC does not track.
    """

    def __init__(self, obj: Any, allowed: Iterable[str], prefix: str = "") -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_allowed", tuple(allowed))
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        key = f"{self._prefix}{name}"
        fields = type(self._obj).model_fields
        if name not in fields:
            alias = next((f for f, info in fields.items() if info.alias == name), None)
            if alias is None:
                raise AttributeError(f"no parameter {key!r}")
            name, key = alias, f"{self._prefix}{alias}"
        value = getattr(self._obj, name)
        if any(key == a or key.startswith(a + ".") for a in self._allowed):
            return value
        if any(a.startswith(key + ".") for a in self._allowed) and isinstance(value, BaseModel):
            return ScopedParams(value, self._allowed, key + ".")
        raise UndeclaredParamError(
            f"parameter {key!r} is read but not declared for this stage (declared: {', '.join(self._allowed)})"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("parameters are read-only")


def stage_params(declared: Iterable[str], path: str | Path = "params.yaml") -> ScopedParams:
    """Load ``path`` and return the view a stage declaring ``declared`` may read."""
    return ScopedParams(load_params(path), declared)
