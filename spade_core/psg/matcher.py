"""Hungarian matching of instance queries to ground-truth segments (Mask2Former costs)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F


def pairwise_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean per-pixel sigmoid BCE between every prediction and every target.

    logits `[N,M]` (M pixels), targets `[S,M]` in [0,1] -> cost `[N,S]`.
    """
    pos = F.softplus(-logits)  # -log sigmoid(x): loss where the target is 1
    neg = F.softplus(logits)  # -log(1 - sigmoid(x)): loss where the target is 0
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """`1 - (2 |p t| + 1) / (|p| + |t| + 1)` with p = sigmoid(logits); `[N,M]`, `[S,M]` -> `[N,S]`."""
    p = logits.sigmoid()
    numerator = 2 * p @ targets.T
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def check_targets(mask_logits: Tensor, targets: list[dict]) -> None:
    """Raise ValueError unless `targets` has one dict per image with labels [S] and masks [S,H,W]."""
    if len(targets) != mask_logits.shape[0]:
        raise ValueError(f"targets: expected {mask_logits.shape[0]} entries (one per image), got {len(targets)}")
    for b, t in enumerate(targets):
        labels, masks = t["labels"], t["masks"]
        if masks.dim() != 3 or masks.shape[0] != labels.shape[0] or masks.shape[-2:] != mask_logits.shape[-2:]:
            raise ValueError(
                f"targets[{b}]: masks must be [S,{mask_logits.shape[-2]},{mask_logits.shape[-1]}] with S = "
                f"len(labels) = {labels.shape[0]}, got {tuple(masks.shape)} (resize them to the mask resolution)"
            )


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to GT segments minimising
    `cost_class * (-p[gt class]) + cost_mask * BCE + cost_dice * dice`, per image (scipy).

    `forward(class_logits [B,Q,C+1], mask_logits [B,Q,H,W], targets: list[dict(labels LongTensor [S],
    masks [S,H,W] float/bool)]) -> list[(pred_idx LongTensor [K], gt_idx LongTensor [K])]`, K = min(Q, S),
    pred_idx ascending. Mask costs use all H*W pixels (the masks are small: stride 4 or 8 of the image).
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice

    def cost_matrix(self, class_logits: Tensor, mask_logits: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
        """Cost `[Q,S]` for one image: class_logits `[Q,C+1]`, mask_logits `[Q,H,W]`, labels `[S]`, masks
        `[S,H,W]`."""
        prob = class_logits.float().softmax(-1)
        out = mask_logits.flatten(1).float()
        tgt = masks.flatten(1).float()
        return (
            self.cost_class * -prob[:, labels]
            + self.cost_mask * pairwise_bce_cost(out, tgt)
            + self.cost_dice * pairwise_dice_cost(out, tgt)
        )

    @torch.no_grad()
    def forward(self, class_logits: Tensor, mask_logits: Tensor, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        if class_logits.shape[:2] != mask_logits.shape[:2]:
            raise ValueError(
                f"class_logits {tuple(class_logits.shape)} and mask_logits {tuple(mask_logits.shape)} disagree on [B,Q]"
            )
        check_targets(mask_logits, targets)
        return hungarian_indices(
            targets, lambda b, t: self.cost_matrix(class_logits[b], mask_logits[b], t["labels"].long(), t["masks"])
        )


def hungarian_indices(targets: list[dict], cost_of) -> list[tuple[Tensor, Tensor]]:
    """Per image the optimal (query, target) assignment of the cost ``cost_of(b, targets[b])`` ``[Q,S]``
    (``scipy.optimize.linear_sum_assignment``); images without targets get empty index tensors. CPU long tensors."""
    indices = []
    for b, t in enumerate(targets):
        if t["labels"].numel() == 0:
            empty = torch.zeros(0, dtype=torch.long)
            indices.append((empty, empty.clone()))
            continue
        rows, cols = linear_sum_assignment(cost_of(b, t).cpu().numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return indices


def matched_pairs(pred: Tensor, targets: list[dict], key: str,
                  indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The matched predictions and their targets over a batch: rows ``pred_idx`` of ``pred [B,Q,...]`` and rows
    ``gt_idx`` of ``targets[b][key]``, concatenated -> ``([K,...], [K,...])`` on ``pred``'s device."""
    device = pred.device
    src = torch.cat([pred[b, p.to(device)] for b, (p, _) in enumerate(indices)])
    tgt = torch.cat([targets[b][key].to(device)[g.to(device)] for b, (_, g) in enumerate(indices)])
    return src, tgt


def instance_normaliser(targets: list[dict], num: float | None) -> float:
    """The normaliser of the instance losses: ``num`` (the DDP mean under DDP) or, when None, the number of GT
    instances in the batch; at least 1."""
    if num is None:
        num = float(sum(int(t["labels"].numel()) for t in targets))
    return max(float(num), 1.0)
