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
  of a batch share a name (a batch-wise InfoNCE would push "red ball" away from itself). A region with several
  names (a subject-object pair that is both "left of" and "far from") takes a target distribution over them
  instead of one label, and a long-tailed vocabulary can be trained *balanced* by logit adjustment (Menon et
  al., "Long-tail learning via logit adjustment", ICLR 2021): the log of the names' training frequencies is
  added to the logits inside the loss only, so the learned cosine logits estimate a class-balanced posterior
  (the frequent "far from" no longer wins every pair whose name the region cannot tell).
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
                     logit_scale: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy of cosine logits ``logit_scale * norm(region) @ norm(vocab).T`` on the regions' names.

    region_emb: [N,E]; labels: [N] long in [0, C) (rows with label -1 are ignored), or [N,C] non-negative
    weights of each row's names (normalised here to a target distribution; all-zero rows are ignored);
    vocab_emb: [C,E]; log_prior: optional [C] log training frequencies of the names, added to the logits
    (logit adjustment: the loss of a balanced classifier). Returns a scalar (0 with a graph to ``region_emb``
    if no row is kept).
    """
    if region_emb.ndim != 2 or vocab_emb.ndim != 2 or region_emb.shape[1] != vocab_emb.shape[1]:
        raise ValueError(f"region_emb [N,E] and vocab_emb [C,E] expected, got {tuple(region_emb.shape)}, "
                         f"{tuple(vocab_emb.shape)}")
    soft = labels.ndim == 2
    if labels.shape[:1] != region_emb.shape[:1] or (soft and labels.shape[1] != vocab_emb.shape[0]) or labels.ndim > 2:
        raise ValueError(f"labels: expected [{region_emb.shape[0]}] or [{region_emb.shape[0]}, {vocab_emb.shape[0]}], "
                         f"got {tuple(labels.shape)}")
    if log_prior is not None and log_prior.shape != vocab_emb.shape[:1]:
        raise ValueError(f"log_prior: expected [{vocab_emb.shape[0]}], got {tuple(log_prior.shape)}")
    keep = labels.sum(-1) > 0 if soft else labels >= 0
    if not bool(keep.any()):
        return region_emb.sum() * 0.0
    logits = logit_scale * F.normalize(region_emb[keep], dim=-1) @ F.normalize(vocab_emb, dim=-1).t()
    if log_prior is not None:
        logits = logits + log_prior.to(logits.dtype)
    if not soft:
        return F.cross_entropy(logits, labels[keep])
    target = labels[keep].to(logits.dtype)
    return -(target / target.sum(-1, keepdim=True) * logits.log_softmax(-1)).sum(-1).mean()
