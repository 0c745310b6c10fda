"""Calibration of the student UNet: open_clip models, the implicit captioner, LoRA set-up and the loss."""

from .captioner import ImplicitCaptioner, load_adapter, save_adapter
from .clip import (
    OBJECT_TEMPLATES,
    PREDICATE_TEMPLATES,
    TINY_CLIP_CONFIG,
    TINY_CLIP_NAME,
    ClipModels,
    build_tiny_clip,
    encode_text,
    image_features,
    load_clip,
)
from .lora import (
    ADAPTER_NAME,
    CALIBRATION_MODES,
    DEFAULT_TARGETS,
    add_calibration_lora,
    has_adapters,
    load_lora_state_dict,
    lora_state_dict,
    set_calibration_mode,
    teacher_mode,
)
from .loss import calibration_loss, map_correlation

__all__ = [
    "ADAPTER_NAME",
    "CALIBRATION_MODES",
    "DEFAULT_TARGETS",
    "OBJECT_TEMPLATES",
    "PREDICATE_TEMPLATES",
    "TINY_CLIP_CONFIG",
    "TINY_CLIP_NAME",
    "ClipModels",
    "ImplicitCaptioner",
    "add_calibration_lora",
    "build_tiny_clip",
    "calibration_loss",
    "encode_text",
    "has_adapters",
    "image_features",
    "load_adapter",
    "load_clip",
    "load_lora_state_dict",
    "lora_state_dict",
    "map_correlation",
    "save_adapter",
    "set_calibration_mode",
    "teacher_mode",
]
