"""LoRA (peft) on the student UNet's cross-attention projections, and the calibration ablation modes.

``W <- W + (alpha / r) B A`` on ``attn2.to_k`` and ``attn2.to_v`` by default (the paper's ``B D`` of ``W_k``,
``W_v``). peft matches a list entry when a module's name equals it or ends with ``"." + entry``, so
``"attn2.to_k"`` hits cross-attention only, never ``attn1.to_k``. ``init_lora_weights="gaussian"`` draws A from
N(0, 1/r) and sets B = 0: the student starts exactly equal to the teacher.

Teacher and student share one UNet: the teacher runs inside :func:`teacher_mode` (adapters off).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
ADAPTER_NAME = "calibration"
CALIBRATION_MODES: tuple[str, ...] = ("lora", "full", "none")


def _matching_modules(model: nn.Module, target: str) -> list[str]:
    return [n for n, _ in model.named_modules() if n == target or n.endswith("." + target)]


def has_adapters(unet: nn.Module) -> bool:
    """True when peft adapters have been injected into ``unet``."""
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


def add_calibration_lora(
    unet: nn.Module,
    rank: int,
    alpha: float,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    adapter_name: str = ADAPTER_NAME,
) -> list[nn.Parameter]:
    """Freeze ``unet`` and add a LoRA adapter on ``target_modules``; returns the trainable LoRA parameters.

    Every target must name at least one ``nn.Linear`` (as a full name or a dotted suffix), else ValueError.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank: expected a positive int, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"alpha: expected > 0, got {alpha!r}")
    if isinstance(target_modules, str) or len(target_modules) == 0:
        raise ValueError(f"target_modules: expected a non-empty list of module names, got {target_modules!r}")
    modules = dict(unet.named_modules())
    for target in target_modules:
        names = _matching_modules(unet, target)
        if not names:
            raise ValueError(f"target_modules: {target!r} matches no module of the UNet")
        if not all(isinstance(modules[n], nn.Linear) for n in names):
            raise ValueError(f"target_modules: {target!r} matches modules that are not nn.Linear")
    if has_adapters(unet) and adapter_name in getattr(unet, "peft_config", {}):
        raise ValueError(f"adapter_name: the UNet already has an adapter named {adapter_name!r}")
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=float(alpha), init_lora_weights="gaussian", target_modules=list(target_modules)
    )
    unet.add_adapter(config, adapter_name=adapter_name)
    return [p for p in unet.parameters() if p.requires_grad]


def set_calibration_mode(
    unet: nn.Module,
    mode: str,
    rank: int = 4,
    alpha: float = 4.0,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
) -> list[nn.Parameter]:
    """Prepare ``unet`` for one calibration ablation; returns the parameters to optimise.

    ``"lora"``: LoRA on ``target_modules`` (:func:`add_calibration_lora`), base weights frozen;
    ``"full"``: every UNet weight trainable, no LoRA (paper's "w/o LoRA");
    ``"none"``: nothing trainable (paper's "w/o calibration": the pretrained UNet is passed on).
    """
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"mode: expected one of {CALIBRATION_MODES}, got {mode!r}")
    if mode == "lora":
        return add_calibration_lora(unet, rank, alpha, target_modules)
    if has_adapters(unet):
        raise ValueError(f"mode: {mode!r} expects a UNet without LoRA adapters")
    unet.requires_grad_(mode == "full")
    return [p for p in unet.parameters() if p.requires_grad]


@contextmanager
def teacher_mode(unet: nn.Module) -> Iterator[nn.Module]:
    """Run the shared UNet as the teacher: adapters disabled inside the block, restored after.

    peft's ``enable_adapters`` also resets ``requires_grad`` of the adapter weights; the flags of every
    parameter are saved on entry and restored on exit, so a frozen student stays frozen. Without adapters
    this is a no-op.
    """
    if not has_adapters(unet):
        yield unet
        return
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    was_enabled = not all(m.disable_adapters for m in unet.modules() if isinstance(m, BaseTunerLayer))
    unet.disable_adapters()
    try:
        yield unet
    finally:
        if was_enabled:
            unet.enable_adapters()
        for p, flag in flags:
            p.requires_grad_(flag)


def lora_state_dict(unet: nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The LoRA weights (peft's ``get_peft_model_state_dict``: keys ``<module>.lora_A.weight`` etc.), on CPU."""
    if not has_adapters(unet):
        raise ValueError("unet: has no LoRA adapter")
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, owner: str) -> None:
    """Raise ValueError unless ``state`` has exactly the keys of ``expected``, each with the same shape.

    ``what`` names the source in the message (``"state"``, ``"path"``), ``owner`` the module it is loaded into.
    """
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{what}: keys differ from {owner}'s (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{what}: {k} has shape {tuple(v.shape)}, {owner} expects {tuple(expected[k].shape)}")


def load_lora_state_dict(
    unet: nn.Module,
    state: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    adapter_name: str = ADAPTER_NAME,
) -> list[nn.Parameter]:
    """Add the calibration LoRA to a fresh ``unet`` and load ``state`` into it; returns the LoRA parameters.

    Raises ValueError when ``state`` does not cover exactly the adapter's weights (other rank or targets).
    """
    params = add_calibration_lora(unet, rank, alpha, target_modules, adapter_name)
    check_state_dict(state, get_peft_model_state_dict(unet, adapter_name=adapter_name), "state", "the LoRA adapter")
    result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise ValueError(f"state: peft did not use {result.unexpected_keys[:3]}")
    return params
