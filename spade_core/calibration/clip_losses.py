"""Losses of the embedded CLIP's pre-training: global image-caption contrast and region-name alignment.

The embedded CLIP (``spade train-clip``) stands in for CLIP's internet pre-training: it has to align whole
images with their captions (what the implicit captioner reads, paper eq. 4) and *regions* with the names of
what they show (what the pooled second opinion of eq. 18-19 and the open-vocabulary classifier read). Two
losses, both tensors in, scalar out:

* :func:`image_caption_loss`: CLIP's symmetric InfoNCE between a batch of image embeddings and the embeddings
  of their captions (open_clip's ``ClipLoss``; the i-th caption is the i-th image's positive).
* :func:`region_name_loss`: each region embedding (a mask-pooled dense feature, or the pooled feature of a
  crop) against the text embeddings of a whole vocabulary (all object names, or all predicate names), cross
  entropy on the region's name. Contrast over the vocabulary rather than over the batch, because many regions
  of a batch share a name (a batch-wise InfoNCE would push "red ball" away from itself).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

_CLIP_LOSS = open_clip.ClipLoss()


def image_caption_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: image_emb [B,E] and text_emb [B,E] (row i = a positive pair), logit_scale scalar
    (already exponentiated). Embeddings are L2-normalised here. Returns a scalar."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"image_emb and text_emb must both be [B,E], got {tuple(image_emb.shape)}, "
                         f"{tuple(text_emb.shape)}")
    return _CLIP_LOSS(F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1), logit_scale)


def region_name_loss(region_emb: torch.Tensor, labels: torch.Tensor, vocab_emb: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Cross entropy of cosine logits ``logit_scale * norm(region) @ norm(vocab).T`` on the regions' names.

    region_emb: [N,E]; labels: [N] long in [0, C) (rows with label -1 are ignored); vocab_emb: [C,E].
    Returns a scalar (0 with a graph to ``region_emb`` if every label is -1).
    """
    if region_emb.ndim != 2 or vocab_emb.ndim != 2 or region_emb.shape[1] != vocab_emb.shape[1]:
        raise ValueError(f"region_emb [N,E] and vocab_emb [C,E] expected, got {tuple(region_emb.shape)}, "
                         f"{tuple(vocab_emb.shape)}")
    if labels.shape != region_emb.shape[:1]:
        raise ValueError(f"labels: expected [{region_emb.shape[0]}], got {tuple(labels.shape)}")
    keep = labels >= 0
    if not bool(keep.any()):
        return region_emb.sum() * 0.0
    logits = logit_scale * F.normalize(region_emb[keep], dim=-1) @ F.normalize(vocab_emb, dim=-1).t()
    return F.cross_entropy(logits, labels[keep])
