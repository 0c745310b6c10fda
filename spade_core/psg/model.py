"""`SpadePSG`: the spatial-aware context reasoning model of SPADE (DESIGN §4.3), assembled.

UNet block features -> `FeaturePyramid` -> `InstanceDecoder` (masks + H_o) -> object `OpenVocabClassifier`;
predicted masks + H_o -> `spatial_semantic_graph` G -> `RelationGraphTransformer` -> cosine similarity S ->
`select_relation_pairs` -> `RelationQueryBuilder` -> `RelationDecoder` (H_r) -> predicate
`OpenVocabClassifier`. Pooled CLIP second opinion (inference only: it has no trainable part): the dense CLIP
map mask-pooled inside each predicted mask (objects) and inside the union of subject and object masks
(predicates), classified against the same text embeddings and fused at `predict` time.

The frozen parts (UNet + LoRA + captioner adapter, CLIP) stay outside: the model consumes UNet block features
and the dense CLIP map, so both can be cached per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spade_core.psg.classifier import OpenVocabClassifier, mask_pool, pooled_logits
from spade_core.psg.features import FeaturePyramid
from spade_core.psg.graph import spatial_semantic_graph
from spade_core.psg.instance_decoder import InstanceDecoder
from spade_core.psg.mask_losses import mask_losses, resize_target_masks
from spade_core.psg.matcher import HungarianMatcher
from spade_core.psg.postprocess import postprocess
from spade_core.psg.relation_losses import (
    matched_gt_from_indices,
    pair_targets,
    relation_indicator,
    relation_loss,
    relation_query_loss,
)
from spade_core.psg.relations import RelationDecoder, RelationQueryBuilder, pair_union_masks, select_relation_pairs
from spade_core.psg.rgt import RelationGraphTransformer


def detected_queries(objectness: Tensor, threshold: float, min_count: int) -> Tensor:
    """Queries taking part in the graph, RGT and relation pairs: `objectness [B,Q]` > `threshold`, plus the
    `min_count` most object-like queries of each image (so early in training there are pairs at all).
    Returns bool `[B,Q]`."""
    rank = objectness.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    return (objectness > threshold) | (rank < min_count)


@dataclass
class PSGLossWeights:
    """`L = rel * L_rel + rqc * L_rqc + mask * L_mask`, `L_mask = sum over decoder outputs of
    (ce * L_ce + bce * L_bce + dice * L_dice)` (Mask2Former's 2 / 5 / 5)."""

    rel: float = 1.0
    rqc: float = 0.6
    mask: float = 1.0
    ce: float = 2.0
    bce: float = 5.0
    dice: float = 5.0


class SpadePSG(nn.Module):
    """SPADE panoptic scene graph model over frozen UNet features.

    Args:
        feature_channels: channels of the UNet block features (`UNetFeatureExtractor.channels`).
        clip_dim: E, width of the CLIP text embeddings and of the dense CLIP map.
        hidden_dim, num_queries, num_heads: D, Q, attention heads.
        rgt_blocks: RGT depth (8).
        use_lcnl, use_lcnnl, use_lcl: RGT parts (paper Table 6).
        eta, max_pairs: relation-query threshold and count P.
        graph_dilation, semantic_threshold: graph construction.
        alpha: fusion weight of the decoder classifier, `P = P_diff^alpha * P_pool^(1-alpha)`.
        use_diffusion_logits, use_pooled_logits: classification sources at inference (paper Table 7); the
            decoder classifier is always trained (matching needs it) and always gives the objectness.
        use_rqc: include L_rqc in the loss.
        num_levels, decoder_layers, relation_layers: pyramid levels, depths of Phi_ins and Phi_rel (3, 3).
        object_threshold, min_relation_objects: queries with objectness `1 - p(no object)` above the threshold
            (and at least the `min_relation_objects` most object-like ones) form the graph and the pairs;
            the others (predicted "no object", with near-identical features) would crowd out the real pairs.
        deep_supervision: match + mask losses on every earlier decoder output too.
        no_object_weight, no_relation_weight: CE weights of the "none" classes.
        cost_class, cost_mask, cost_dice: Hungarian matching costs.
        pooled_temperature: logit scale of the pooled CLIP classification (CLIP's 100).
        loss_weights: `PSGLossWeights` (or a dict of its fields).

    `.config` holds the constructor arguments (JSON-serialisable): `SpadePSG(**model.config)` rebuilds it.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        clip_dim: int,
        hidden_dim: int = 64,
        num_queries: int = 16,
        num_heads: int = 4,
        rgt_blocks: int = 8,
        use_lcnl: bool = True,
        use_lcnnl: bool = True,
        use_lcl: bool = True,
        eta: float = 0.65,
        max_pairs: int = 32,
        graph_dilation: int = 3,
        semantic_threshold: float = 0.8,
        alpha: float = 0.34,
        use_diffusion_logits: bool = True,
        use_pooled_logits: bool = True,
        use_rqc: bool = True,
        num_levels: int = 4,
        decoder_layers: int = 3,
        relation_layers: int = 3,
        object_threshold: float = 0.5,
        min_relation_objects: int = 4,
        deep_supervision: bool = True,
        no_object_weight: float = 0.1,
        no_relation_weight: float = 0.1,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        pooled_temperature: float = 100.0,
        loss_weights: PSGLossWeights | dict | None = None,
    ):
        # the constructor arguments, JSON-serialisable, for checkpoints (`SpadePSG(**model.config)`)
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["feature_channels"] = [int(c) for c in feature_channels]
        if isinstance(loss_weights, PSGLossWeights):
            config["loss_weights"] = asdict(loss_weights)
        super().__init__()
        self.config = config
        if not (use_diffusion_logits or use_pooled_logits):
            raise ValueError("use_diffusion_logits and use_pooled_logits cannot both be False")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.num_queries, self.eta, self.max_pairs = num_queries, eta, max_pairs
        self.object_threshold, self.min_relation_objects = object_threshold, min_relation_objects
        self.graph_dilation, self.semantic_threshold, self.alpha = graph_dilation, semantic_threshold, alpha
        self.use_diffusion_logits, self.use_pooled_logits = use_diffusion_logits, use_pooled_logits
        self.use_rqc, self.deep_supervision = use_rqc, deep_supervision
        self.no_object_weight, self.no_relation_weight = no_object_weight, no_relation_weight
        self.pooled_temperature = pooled_temperature
        if isinstance(loss_weights, dict):
            loss_weights = PSGLossWeights(**loss_weights)
        self.loss_weights = loss_weights or PSGLossWeights()

        self.pyramid = FeaturePyramid(feature_channels, hidden_dim, num_levels)
        self.instance_decoder = InstanceDecoder(hidden_dim, num_queries, decoder_layers, num_heads, None, num_levels)
        self.object_classifier = OpenVocabClassifier(hidden_dim, clip_dim)
        self.rgt = RelationGraphTransformer(hidden_dim, rgt_blocks, num_heads, use_lcnl, use_lcnnl, use_lcl)
        self.query_builder = RelationQueryBuilder(hidden_dim)
        self.relation_decoder = RelationDecoder(hidden_dim, relation_layers, num_heads, num_levels)
        self.predicate_classifier = OpenVocabClassifier(hidden_dim, clip_dim)
        self.matcher = HungarianMatcher(cost_class, cost_mask, cost_dice)

    def forward(
        self,
        unet_feats: list[Tensor],
        dense_clip: Tensor | None,
        obj_text: Tensor,
        pred_text: Tensor,
        graph: Tensor | None = None,
    ) -> dict:
        """Run the model.

        Args:
            unet_feats: UNet block features `[B,C_l,h_l,w_l]`.
            dense_clip: `[B,E,h,w]` dense CLIP map for the pooled second opinion (None: pooled logits off).
            obj_text: `[C_obj,E]`, pred_text `[C_pred,E]` L2-normalised class text embeddings.
            graph: optional `[B,Q,Q]` 0/1 graph replacing the spatial-semantic one (ablations, tests).
        Returns dict: `mask_logits [B,Q,H,W]`, `query_feats [B,Q,D]`, `class_logits [B,Q,C_obj+1]`,
            `aux` list of `(class_logits, mask_logits)`, `query_valid [B,Q]` bool (see
            `detected_queries`), `graph [B,Q,Q]`, `rgt_feats [B,Q,D]`, `S [B,Q,Q]`,
            `pairs [B,P,2]`, `pair_valid [B,P]`, `rel_feats [B,P,D]`, `rel_logits [B,P,C_pred+1]`,
            `pooled_obj_logits [B,Q,C_obj] | None`, `pooled_rel_logits [B,P,C_pred] | None`.
        """
        pyramid, mask_features = self.pyramid(unet_feats)
        inst = self.instance_decoder(pyramid, mask_features)
        class_logits = self.object_classifier(inst.query_feats, obj_text)
        aux = [(self.object_classifier(f, obj_text), m) for f, m in inst.aux] if self.deep_supervision else []

        soft_masks = inst.mask_logits.detach().sigmoid()
        objectness = 1 - class_logits.detach().softmax(-1)[..., -1]
        valid = detected_queries(objectness, self.object_threshold, self.min_relation_objects)
        if graph is None:
            graph = spatial_semantic_graph(soft_masks > 0.5, inst.query_feats.detach(), self.graph_dilation,
                                           self.semantic_threshold, valid)
        nodes = self.rgt(inst.query_feats, graph, valid)
        unit = F.normalize(nodes, dim=-1)
        S = unit @ unit.transpose(1, 2)
        pairs, pair_valid = select_relation_pairs(S.detach(), self.eta, self.max_pairs, valid)
        rel_feats = self.relation_decoder(self.query_builder(nodes, pairs), pyramid, pair_valid)
        rel_logits = self.predicate_classifier(rel_feats, pred_text)

        pooled_obj = pooled_rel = None
        if dense_clip is not None and self.use_pooled_logits:
            with torch.no_grad():
                dense = dense_clip.to(soft_masks.dtype)
                pooled_obj = pooled_logits(mask_pool(dense, soft_masks), obj_text, self.pooled_temperature)
                union = pair_union_masks(soft_masks, pairs)
                pooled_rel = pooled_logits(mask_pool(dense, union), pred_text, self.pooled_temperature)
        return {
            "mask_logits": inst.mask_logits,
            "query_feats": inst.query_feats,
            "class_logits": class_logits,
            "aux": aux,
            "query_valid": valid,
            "graph": graph,
            "rgt_feats": nodes,
            "S": S,
            "pairs": pairs,
            "pair_valid": pair_valid,
            "rel_feats": rel_feats,
            "rel_logits": rel_logits,
            "pooled_obj_logits": pooled_obj,
            "pooled_rel_logits": pooled_rel,
        }

    def _mask_loss(self, class_logits: Tensor, mask_logits: Tensor, targets: list[dict], num_masks: float | None,
                   w: PSGLossWeights) -> tuple[Tensor, dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        indices = self.matcher(class_logits, mask_logits, targets)
        parts = mask_losses(class_logits, mask_logits, targets, indices, self.no_object_weight, num_masks)
        total = w.ce * parts["loss_ce"] + w.bce * parts["loss_bce"] + w.dice * parts["loss_dice"]
        return total, parts, indices

    def loss(
        self,
        outputs: dict,
        targets: list[dict],
        weights: PSGLossWeights | dict | None = None,
        num_masks: float | None = None,
    ) -> dict[str, Tensor]:
        """Training loss `L = L_rel + 0.6 L_rqc + 1.0 L_mask` (weights from `weights` or the constructor).

        Args:
            outputs: `forward` output.
            targets: per image `dict(labels LongTensor [S] (into obj_text), masks [S,Hm,Wm] bool/float at any
                resolution (resized to the mask resolution), relations LongTensor [R,3] (gt_subject,
                gt_object, predicate into pred_text))`.
            weights: `PSGLossWeights` or a dict of its fields.
            num_masks: normaliser of the mask losses (default: GT masks in the batch; pass the DDP mean).
        Returns dict: `loss`, `loss_rel`, `loss_rqc`, `loss_mask`, `loss_ce`, `loss_bce`, `loss_dice` (final
            layer), and `loss_ce_{i}`, `loss_bce_{i}`, `loss_dice_{i}` for every aux output i.
        """
        w = weights if isinstance(weights, PSGLossWeights) else PSGLossWeights(**{**asdict(self.loss_weights),
                                                                                   **(weights or {})})
        mask_logits = outputs["mask_logits"]
        device = mask_logits.device
        size = tuple(mask_logits.shape[-2:])
        tgts = [
            {"labels": t["labels"].long().to(device), "masks": resize_target_masks(t["masks"].to(device), size)}
            for t in targets
        ]
        loss_mask, parts, indices = self._mask_loss(outputs["class_logits"], mask_logits, tgts, num_masks, w)
        result = dict(parts)
        for i, (cl, ml) in enumerate(outputs["aux"]):
            aux_total, aux_parts, _ = self._mask_loss(cl, ml, tgts, num_masks, w)
            loss_mask = loss_mask + aux_total
            result.update({f"{k}_{i}": v for k, v in aux_parts.items()})

        relations = [t.get("relations", torch.zeros(0, 3, dtype=torch.long)).long().to(device) for t in targets]
        matched_gt = matched_gt_from_indices(indices, self.num_queries).to(device)
        S = outputs["S"]
        if self.use_rqc:
            psi, valid = relation_indicator(matched_gt, relations, self.num_queries, symmetric=True)
            loss_rqc = relation_query_loss(S, psi, valid)
        else:
            loss_rqc = S.sum() * 0.0
        rel_logits = outputs["rel_logits"]
        rel_targets = pair_targets(outputs["pairs"], matched_gt, relations, rel_logits.shape[-1] - 1)
        loss_rel = relation_loss(rel_logits, rel_targets, self.no_relation_weight, outputs["pair_valid"])
        loss = w.rel * loss_rel + w.rqc * loss_rqc + w.mask * loss_mask
        result.update({"loss": loss, "loss_rel": loss_rel, "loss_rqc": loss_rqc, "loss_mask": loss_mask})
        return result

    @torch.no_grad()
    def predict(
        self,
        outputs: dict,
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
        max_triplets: int = 100,
        score_threshold: float = 0.0,
    ) -> list[dict[str, Tensor]]:
        """Per-image `dict(masks bool [N,Hi,Wi], labels [N], scores [N], triplets float [T,4])`, triplet rows
        `(subject, object, predicate, score)` ranked by `score = s_subj * s_obj * s_pred` (see `postprocess`).

        `image_size`: one `(Hi, Wi)` for the batch or one per image.
        """
        batch = outputs["mask_logits"].shape[0]
        if len(image_size) == 2 and all(isinstance(s, int) for s in image_size):
            sizes = [tuple(image_size)] * batch
        else:
            sizes = [tuple(s) for s in image_size]
        if len(sizes) != batch:
            raise ValueError(f"image_size: expected one (H, W) or {batch} of them, got {len(sizes)}")
        return postprocess(outputs, sizes, self.alpha, self.use_diffusion_logits, self.use_pooled_logits,
                           max_triplets, score_threshold)
