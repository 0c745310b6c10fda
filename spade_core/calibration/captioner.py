"""The implicit captioner: frozen CLIP image encoder + trainable MLP adapter -> T cross-attention tokens.

SPADE conditions the student UNet not on text but on ``c = MLP(CLIP_image(x))``, shaped as T tokens of the
UNet's cross-attention width D, so that student token i can be compared with teacher prompt token i.

Adapter design (ours): ``LayerNorm(E) -> Linear(E, H) -> GELU -> Linear(H, T*D)``, reshaped to [T, D], plus a
learned [T, D] token embedding ``token_bias``. Why not ODISE's ``Linear(E, D)`` + positional embedding: with one
image vector shared by all tokens, token i's key is ``W_k (m + p_i)`` and the image term ``q . W_k m`` is the
same for every token, so it cancels in the softmax over tokens: the student's maps could not depend on the
image through the conditioning at all. Emitting T*D values makes every token image-dependent. Why not SPADE++'s
3-layer MLP with hidden 2048 (about 120M parameters at SD size): a single hidden layer of width H keeps it at
``E*H + H*T*D`` (H=256 at SD-1.5 size: 15M; the tiny preset, E=64, H=64, T=77, D=32: 0.16M) and is enough for a
mapping from one vector. ``token_bias`` can be initialised from the text encoder's empty-prompt embedding
(``init_tokens``), as ODISE starts from the null prompt; otherwise N(0, 0.02^2).

Dense features for the PSG model stay in the joint CLIP space (:meth:`ImplicitCaptioner.dense_features`):
the open-vocabulary classifier compares pooled features with CLIP *text* embeddings, which live in that space.
The adapter's hidden space has no text counterpart (the adapter maps one vector to T tokens, not a pixel to a
class embedding), so passing pixels through its first layers would give features nothing can be compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .clip import _vision_tower, image_features
from .lora import check_state_dict


class ImplicitCaptioner(nn.Module):
    """``cond = token_bias + MLP(CLIP_image(x))``: [B,3,S,S] normalised images -> [B,T,D] tokens.

    Args:
        clip_model: an open_clip CLIP model (or its ViT image tower); only the image tower is kept, frozen.
        embed_dim: E, the CLIP joint embedding width (checked against the tower).
        num_tokens: T, the teacher prompt length (77 for SD's CLIP tokenizer).
        cross_attention_dim: D, the UNet's ``cross_attention_dim``.
        hidden_dim: H, the adapter's hidden width.
        init_tokens: optional [T, D] initial value of ``token_bias`` (e.g. the empty-prompt text embedding).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        embed_dim: int,
        num_tokens: int,
        cross_attention_dim: int,
        hidden_dim: int,
        init_tokens: torch.Tensor | None = None,
    ):
        super().__init__()
        for arg, value in (("embed_dim", embed_dim), ("num_tokens", num_tokens),
                           ("cross_attention_dim", cross_attention_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg}: expected a positive int, got {value!r}")
        self.visual = _vision_tower(clip_model)
        if self.visual.output_dim != embed_dim:
            raise ValueError(f"embed_dim: {embed_dim} != the CLIP image tower's output dim {self.visual.output_dim}")
        self.visual.requires_grad_(False).eval()
        self.embed_dim, self.num_tokens, self.cross_attention_dim = embed_dim, num_tokens, cross_attention_dim
        self.hidden_dim = hidden_dim
        self.adapter = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_tokens * cross_attention_dim),
        )
        if init_tokens is None:
            init_tokens = 0.02 * torch.randn(num_tokens, cross_attention_dim)
        elif tuple(init_tokens.shape) != (num_tokens, cross_attention_dim):
            raise ValueError(
                f"init_tokens: expected [{num_tokens}, {cross_attention_dim}], got {tuple(init_tokens.shape)}"
            )
        self.token_bias = nn.Parameter(init_tokens.detach().clone().float())

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.visual.image_size)

    def train(self, mode: bool = True) -> ImplicitCaptioner:
        """Switch the adapter's mode; the CLIP tower always stays in eval mode."""
        super().train(mode)
        self.visual.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter MLP and the token embedding (CLIP excluded)."""
        return [*self.adapter.parameters(), self.token_bias]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the trainable part only (keys ``adapter.*`` and ``token_bias``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("visual.")}

    @torch.no_grad()
    def clip_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen CLIP features: pooled [B,E] and dense [B,E,h,w] (joint space, see module docstring)."""
        return image_features(self.visual, images)

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] normalised images -> dense CLIP map [B,E,h,w] (frozen, no grad), for mask pooling."""
        return self.clip_features(images)[1]

    def condition(self, pooled: torch.Tensor) -> torch.Tensor:
        """Adapter only: pooled CLIP embeddings [B,E] -> conditioning tokens [B,T,D] (differentiable)."""
        if pooled.ndim != 2 or pooled.shape[1] != self.embed_dim:
            raise ValueError(f"pooled: expected [B, {self.embed_dim}], got {tuple(pooled.shape)}")
        tokens = self.adapter(pooled.to(self.token_bias.dtype))
        return tokens.view(-1, self.num_tokens, self.cross_attention_dim) + self.token_bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] images (normalised, CLIP size) -> conditioning tokens [B,T,D]."""
        pooled, _ = self.clip_features(images)
        return self.condition(pooled)


def save_adapter(captioner: ImplicitCaptioner, path: str | Path) -> None:
    """Write the adapter weights and its shape parameters (as metadata) to a safetensors file."""
    state = {k: v.detach().contiguous().cpu() for k, v in captioner.adapter_state_dict().items()}
    meta = {k: getattr(captioner, k) for k in ("embed_dim", "num_tokens", "cross_attention_dim", "hidden_dim")}
    # one metadata key: safetensors writes metadata from a hash map, several keys would come out in any order
    save_file(state, str(path), metadata={"spade_adapter": json.dumps(meta, sort_keys=True)})


def load_adapter(captioner: ImplicitCaptioner, path: str | Path) -> None:
    """Load adapter weights written by :func:`save_adapter`; refuses files made for other shapes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such adapter file {path}")
    state = load_file(str(path))
    check_state_dict(state, captioner.adapter_state_dict(), "path", "the captioner")
    captioner.load_state_dict(state, strict=False)
