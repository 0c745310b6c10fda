"""Diffusion teacher: DDIM / O-BELM samplers, batched inversion with attention capture, models, prompts."""

from .attention import AttentionCapture, SpadeAttnProcessor, cross_attention_layers, fast_attention_backend
from .inversion import METHODS, TeacherMaps, invert, reconstruction_error, sample, teacher_maps
from .models import (
    DiffusionModels,
    build_tiny_diffusion_models,
    decode_latents,
    encode_images,
    encode_prompts,
    encode_token_ids,
    load_diffusion_models,
    model_identity,
)
from .prompts import (
    ROLE_NAMES,
    ROLE_OBJECT,
    ROLE_OTHER,
    ROLE_PREDICATE,
    ROLE_SUBJECT,
    RelationPrompt,
    build_relation_prompt,
)
from .schedulers import (
    SD_SCHEDULER_CONFIG,
    TimestepGrid,
    belm_invert_step,
    belm_sample_step,
    ddim_step,
    grid_from_config,
    make_grid,
)

__all__ = [
    "METHODS",
    "ROLE_NAMES",
    "ROLE_OBJECT",
    "ROLE_OTHER",
    "ROLE_PREDICATE",
    "ROLE_SUBJECT",
    "SD_SCHEDULER_CONFIG",
    "AttentionCapture",
    "DiffusionModels",
    "RelationPrompt",
    "SpadeAttnProcessor",
    "TeacherMaps",
    "TimestepGrid",
    "belm_invert_step",
    "belm_sample_step",
    "build_relation_prompt",
    "build_tiny_diffusion_models",
    "cross_attention_layers",
    "ddim_step",
    "decode_latents",
    "encode_images",
    "encode_prompts",
    "encode_token_ids",
    "fast_attention_backend",
    "grid_from_config",
    "invert",
    "load_diffusion_models",
    "make_grid",
    "model_identity",
    "reconstruction_error",
    "sample",
    "teacher_maps",
]
