"""Attention processors: explicit cross-attention probabilities on demand, fast kernels everywhere else.

Memory-efficient kernels (xformers, PyTorch SDPA, flash) never return attention probabilities. So
:class:`AttentionCapture` installs one :class:`SpadeAttnProcessor` per attention layer of a diffusers UNet:

* self-attention (``attn1``) and every call made while capture is disabled take the fast path:
  xformers ``memory_efficient_attention`` when the tensors are on CUDA and a working xformers build is
  installed (probed once per device, see :func:`fast_attention_backend`), PyTorch SDPA otherwise;
* while capture is enabled, the recorded cross-attention layers (``attn2``) also compute
  ``P = softmax(Q K^T * scale)`` explicitly (float32 scores) and store ``P`` averaged over heads as
  ``[B, HW, T]`` (detached unless ``keep_graph``, in which case gradients flow through the maps to the
  ``to_q``/``to_k`` projections and the conditioning). The layer output still comes from the fast kernel, so
  a recorded UNet call returns bit-identical outputs to an unrecorded one: capturing never perturbs a
  trajectory (BELM's exactness needs identical eps in both directions). The extra cost is one
  ``[B, H, HW, T]`` product per cross-attention layer, in the recorded call only.

Works unchanged after ``unet.add_adapter(LoraConfig(target_modules=["attn2.to_k", "attn2.to_v"]))``: peft
wraps the projection ``Linear`` layers, not the ``Attention`` modules, so the processors stay in place.
Do not call ``unet.enable_xformers_memory_efficient_attention()`` after installing a capture: it replaces
every processor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BACKENDS: dict[str, str] = {}


def fast_attention_backend(device: torch.device | str) -> str:
    """``"xformers"`` if xformers' memory-efficient attention works on ``device`` (CUDA only), else ``"sdpa"``.

    Detected once per device and cached: the PyPI xformers wheel is built for one torch release and raises on
    CPU tensors or with a mismatched torch, so a tiny probe call decides.
    """
    device = torch.device(device)
    key = str(device)
    if key not in _BACKENDS:
        backend = "sdpa"
        if device.type == "cuda":
            try:
                import xformers.ops as xops

                probe = torch.zeros(1, 4, 1, 8, device=device, dtype=torch.float16)
                xops.memory_efficient_attention(probe, probe, probe)
                backend = "xformers"
            except Exception:
                backend = "sdpa"
        _BACKENDS[key] = backend
    return _BACKENDS[key]


def fast_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, backend: str) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` for q [B, H, N, d], k/v [B, H, L, d] -> [B, H, N, d]."""
    if backend == "auto":
        backend = fast_attention_backend(q.device)
    if backend == "xformers" and mask is None and q.is_cuda:
        import xformers.ops as xops

        out = xops.memory_efficient_attention(
            q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(),
            scale=scale,
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)


class SpadeAttnProcessor:
    """diffusers attention processor: fast path, or explicit probabilities recorded into ``capture``.

    Args:
        name: the layer name (key of ``unet.attn_processors`` without ``.processor``).
        capture: the store to record into, or ``None`` for a layer that is never recorded.
        backend: ``"auto"`` (see :func:`fast_attention_backend`), ``"sdpa"`` or ``"xformers"``.
    """

    def __init__(self, name: str, capture: AttentionCapture | None = None, backend: str = "auto"):
        if backend not in ("auto", "sdpa", "xformers"):
            raise ValueError(f"backend must be 'auto', 'sdpa' or 'xformers', got {backend!r}")
        self.name, self.capture, self.backend = name, capture, backend

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch, seq_len, _ = hidden_states.shape if not is_cross else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if is_cross and self.capture is not None and self.capture.enabled:
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            self.capture.record(self.name, scores.softmax(dim=-1).mean(dim=1))  # [B, HW, T]
        # the output always comes from the fast kernel: recording never perturbs the trajectory (BELM exactness)
        hidden_states = fast_attention(query, key, value, attention_mask, attn.scale, self.backend)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


#: UNet parts a layer selection names, and the module-name prefix of each in a diffusers UNet
UNET_PARTS: dict[str, str] = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


def cross_attention_layers(unet: nn.Module, parts: Sequence[str] | None = None) -> list[str]:
    """Names of the cross-attention (``attn2``) layers of a diffusers UNet, in module order; with ``parts`` (a
    subset of :data:`UNET_PARTS`: ``down``, ``mid``, ``up``) only those of the named parts of the UNet."""
    names = [k.removesuffix(".processor") for k in unet.attn_processors if k.endswith("attn2.processor")]
    if parts is None:
        return names
    unknown = sorted(set(parts) - set(UNET_PARTS))
    if unknown:
        raise ValueError(f"parts must be a subset of {list(UNET_PARTS)}, got {unknown}")
    prefixes = tuple(UNET_PARTS[p] for p in parts)
    return [n for n in names if n.startswith(prefixes)]


class AttentionCapture:
    """Installs :class:`SpadeAttnProcessor` on every attention layer of ``unet`` and holds the recorded maps.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (processors are replaced until :meth:`remove`).
        layers: ``attn2`` layer names to record (default: all, see :func:`cross_attention_layers`).
        keep_graph: keep the autograd graph of the recorded maps (student calibration), else detach.
        backend: fast-path backend, ``"auto"`` | ``"sdpa"`` | ``"xformers"``.

    Recording is off until :meth:`enable` (or inside ``with capture.recording():``). ``enable`` clears the
    store; every forward pass while enabled overwrites each recorded layer's map, so the store holds the maps of
    the last UNet call made while enabled. The latent size of that call is taken by a forward pre-hook and used
    to unflatten every layer's ``HW`` into ``(h, w)``.
    """

    def __init__(self, unet: nn.Module, layers: Sequence[str] | None = None, keep_graph: bool = False,
                 backend: str = "auto"):
        cross = cross_attention_layers(unet)
        if not cross:
            raise ValueError("unet has no cross-attention (attn2) layers to capture")
        layers = list(cross if layers is None else layers)
        unknown = sorted(set(layers) - set(cross))
        if unknown or not layers:
            raise ValueError(f"layers must be a non-empty subset of the unet's attn2 layers {cross}; got {unknown}")
        self.unet, self.layers, self.keep_graph = unet, tuple(layers), keep_graph
        self.enabled = False
        self.latent_hw: tuple[int, int] | None = None
        self._store: dict[str, Tensor] = {}
        self._previous = dict(unet.attn_processors)
        recorded = set(layers)
        unet.set_attn_processor({
            key: SpadeAttnProcessor(name, self if name in recorded else None, backend)
            for key in self._previous for name in [key.removesuffix(".processor")]
        })
        self._hook = unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.enabled:
            sample = args[0] if args else kwargs["sample"]
            self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    def record(self, name: str, probs: Tensor) -> None:
        """Store the head-averaged probabilities [B, HW, T] of layer ``name`` (called by the processors)."""
        self._store[name] = probs if self.keep_graph else probs.detach()

    def enable(self) -> None:
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def clear(self) -> None:
        self._store, self.latent_hw = {}, None

    @contextlib.contextmanager
    def recording(self) -> Iterator[AttentionCapture]:
        self.enable()
        try:
            yield self
        finally:
            self.disable()

    @property
    def layer_maps(self) -> dict[str, Tensor]:
        """The raw recorded maps: layer name -> [B, HW, T] float32."""
        return dict(self._store)

    def _layer_hw(self, hw: int) -> tuple[int, int]:
        if self.latent_hw is not None:
            h, w = self.latent_hw
            for k in range(8):
                f = 2**k
                if math.ceil(h / f) * math.ceil(w / f) == hw:
                    return math.ceil(h / f), math.ceil(w / f)
        side = math.isqrt(hw)
        if side * side != hw:
            raise ValueError(f"cannot unflatten an attention map of {hw} positions (latent size {self.latent_hw})")
        return side, side

    def maps(self, size: tuple[int, int] | None = None) -> Tensor:
        """Recorded maps as [B, T, ha, wa]: each layer bilinearly resized to ``size``, then mean over layers.

        ``size`` defaults to the largest recorded resolution.
        """
        if not self._store:
            raise RuntimeError("no attention maps recorded: run the unet inside `capture.recording()` first")
        grids = []
        for m in self._store.values():
            h, w = self._layer_hw(m.shape[1])
            grids.append(m.reshape(m.shape[0], h, w, m.shape[2]).permute(0, 3, 1, 2))
        if size is None:
            size = max((g.shape[-2:] for g in grids), key=lambda s: s[0] * s[1])
        size = (int(size[0]), int(size[1]))
        resized = [g if tuple(g.shape[-2:]) == size else
                   F.interpolate(g, size=size, mode="bilinear", align_corners=False) for g in grids]
        return torch.stack(resized).mean(dim=0)

    def remove(self) -> None:
        """Restore the processors found at construction and drop the hook and the store."""
        self.unet.set_attn_processor(dict(self._previous))  # diffusers pops from the dict
        self._hook.remove()
        self.enabled = False
        self.clear()
