"""`SpadePSG`: the spatial-aware context reasoning model of SPADE (docs/DESIGN.md §4.3), assembled.

UNet block features -> `FeaturePyramid` -> `InstanceDecoder` (masks + H_o) -> object `OpenVocabClassifier`;
predicted masks + H_o -> `spatial_semantic_graph` G -> `RelationGraphTransformer` -> cosine similarity S ->
`select_relation_pairs` -> `RelationQueryBuilder` -> `RelationDecoder` (H_r) -> predicate
`OpenVocabClassifier`. Pooled CLIP second opinion (inference only: it has no trainable part): the dense CLIP
map mask-pooled inside each predicted mask (objects) and inside the union of subject and object masks
(predicates), classified against the same text embeddings and fused at `predict` time.

Box task (`ArchitectureConfig.task = "boxes"`, Visual Genome): a DETR `BoxHead` predicts a box per query (on
every decoder output), the instance decoder's cross-attention is unmasked, the graph's spatial edges come from
the boxes (`box_spatial_semantic_graph`), the pooled CLIP features are taken inside the boxes and the union
boxes, the instance loss is DETR's (CE + L1 + GIoU after box matching), and `predict` returns pixel boxes with
graph-constrained triplets (VG protocol). The mask logits are still computed, unsupervised, unless
`box_source = "mask"`: then BoxInst's projection term supervises them with the GT boxes, the cross-attention is
masked (Mask2Former) and the predicted boxes are the masks' tight boxes (`box_projection`), the head's boxes
filling in for empty masks.

The frozen parts (UNet + LoRA + captioner adapter, CLIP) stay outside: the model consumes UNet block features
and the dense CLIP map, so both can be cached per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from spade_core.psg.box_graph import box_masks, box_spatial_semantic_graph, pairwise_box_iou, union_box_masks
from spade_core.psg.box_head import BoxHead
from spade_core.psg.box_losses import box_losses
from spade_core.psg.box_matcher import BoxHungarianMatcher
from spade_core.psg.box_projection import box_outside_loss, box_projection_loss, boxes_from_mask_logits
from spade_core.psg.classifier import OpenVocabClassifier, mask_pool, pooled_logits
from spade_core.psg.config import PSGLossWeights, SpadePSGConfig
from spade_core.psg.features import FeaturePyramid
from spade_core.psg.graph import pairwise_mask_iou, spatial_semantic_graph
from spade_core.psg.instance_decoder import InstanceDecoder
from spade_core.psg.mask_losses import classification_loss, mask_losses, resize_target_masks
from spade_core.psg.matcher import HungarianMatcher, instance_normaliser, matched_pairs
from spade_core.psg.postprocess import postprocess
from spade_core.psg.relation_losses import (
    matched_gt_from_indices,
    pair_targets,
    relation_indicator,
    relation_loss,
    relation_query_loss,
)
from spade_core.psg.relations import (
    RelationDecoder,
    RelationQueryBuilder,
    pair_union_masks,
    select_relation_pairs,
    suppress_duplicate_queries,
)
from spade_core.psg.rgt import RelationGraphTransformer


def detected_queries(objectness: Tensor, threshold: float, min_count: int, duplicate: Tensor | None = None) -> Tensor:
    """Queries taking part in the graph, RGT and relation pairs: `objectness [B,Q]` > `threshold` and not a
    `duplicate [B,Q]` (bool, `suppress_duplicate_queries`' drops; None: none), plus the `min_count` most
    object-like queries of each image, duplicates ranked after every other query (so early in training, when all
    queries predict one region, there are pairs at all). Returns bool `[B,Q]`."""
    duplicate = torch.zeros_like(objectness, dtype=torch.bool) if duplicate is None else duplicate.bool()
    key = objectness.float() - 2.0 * duplicate.float()  # objectness is in [0, 1]: duplicates come last
    rank = key.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    return ((objectness > threshold) & ~duplicate) | (rank < min_count)


class SpadePSG(nn.Module):
    """SPADE panoptic scene graph model over frozen UNet features, built from a `SpadePSGConfig`
    (`spade_core.psg.config`: architecture, criterion, inference; the fields are documented there).

    `.config` is that config: `SpadePSG(SpadePSGConfig.from_dict(model.config.to_dict()))` rebuilds the model.
    Task "boxes" adds `box_head` (`BoxHead`) and `box_matcher` after every other module, so the modules shared
    with the mask model have the same parameters, names and (under one seed) initial values.
    """

    def __init__(self, config: SpadePSGConfig):
        if not isinstance(config, SpadePSGConfig):
            raise TypeError(f"SpadePSG(config): expected a SpadePSGConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config
        a, c = config.architecture, config.criterion
        # construction order fixes the parameter initialisation drawn from the global RNG: keep it
        self.pyramid = FeaturePyramid(a.feature_channels, a.hidden_dim, a.num_levels)
        self.instance_decoder = InstanceDecoder(a.hidden_dim, a.num_queries, a.decoder_layers, a.num_heads, None,
                                                a.num_levels, masked_attention=self.mask_supervised)
        self.object_classifier = OpenVocabClassifier(a.hidden_dim, a.clip_dim)
        self.rgt = RelationGraphTransformer(a.hidden_dim, a.rgt_blocks, a.num_heads, a.use_lcnl, a.use_lcnnl,
                                            a.use_lcl)
        self.query_builder = RelationQueryBuilder(a.hidden_dim)
        self.relation_decoder = RelationDecoder(a.hidden_dim, a.relation_layers, a.num_heads, a.num_levels)
        self.predicate_classifier = OpenVocabClassifier(a.hidden_dim, a.clip_dim)
        self.matcher = HungarianMatcher(c.cost_class, c.cost_mask, c.cost_dice)
        if self.box_task:  # last: the mask model's parameters and their initial values stay as they are
            self.box_head = BoxHead(a.hidden_dim)
            self.box_matcher = BoxHungarianMatcher(c.cost_class, c.cost_bbox, c.cost_giou, c.cost_proj)

    @property
    def box_task(self) -> bool:
        """Whether this is the box task (`ArchitectureConfig.task == "boxes"`)."""
        return self.config.architecture.task == "boxes"

    @property
    def boxes_from_masks(self) -> bool:
        """Box task with `box_source = "mask"`: boxes read off box-supervised masks."""
        return self.box_task and self.config.architecture.box_source == "mask"

    @property
    def mask_supervised(self) -> bool:
        """Whether the mask logits are trained (mask task, or boxes from masks), so masked attention applies."""
        return not self.box_task or self.boxes_from_masks

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
        Returns dict: `mask_logits [B,Q,H,W]` (unsupervised in the box task with head boxes), `boxes [B,Q,4]`
            normalised `(cx, cy, w, h)` (box task: the ones the model uses and predicts, see `box_source`; None
            for masks), `head_boxes [B,Q,4]` (box task: the `BoxHead`'s; None for masks), `query_feats [B,Q,D]`,
            `class_logits [B,Q,C_obj+1]`, `aux` list of `(class_logits, mask_logits)` of the earlier decoder
            outputs (empty without deep supervision), `aux_boxes` list of their `[B,Q,4]` head boxes (box task;
            else empty), `query_valid [B,Q]`
            bool (`detected_queries`, duplicates of `suppress_duplicate_queries` left out), `graph [B,Q,Q]`,
            `rgt_feats [B,Q,D]`, `S [B,Q,Q]`, `pairs [B,P,2]`,
            `pair_valid [B,P]`, `rel_feats [B,P,D]`, `rel_logits [B,P,C_pred+1]`,
            `pooled_obj_logits [B,Q,C_obj] | None`, `pooled_rel_logits [B,P,C_pred] | None` (pooled inside the
            soft masks and their pair unions, or inside the boxes and the union boxes).
        """
        a = self.config.architecture
        pyramid, mask_features = self.pyramid(unet_feats)
        inst = self.instance_decoder(pyramid, mask_features)
        class_logits = self.object_classifier(inst.query_feats, obj_text)
        deep = self.config.criterion.deep_supervision
        aux = [(self.object_classifier(f, obj_text), m) for f, m in inst.aux] if deep else []
        head_boxes = self.box_head(inst.query_feats) if self.box_task else None
        boxes = boxes_from_mask_logits(inst.mask_logits, head_boxes) if self.boxes_from_masks else head_boxes
        aux_boxes = [self.box_head(f) for f, _ in inst.aux] if deep and self.box_task else []

        soft_masks = inst.mask_logits.detach().sigmoid()
        objectness = 1 - class_logits.detach().softmax(-1)[..., -1]
        duplicate = None
        if a.duplicate_iou is not None:
            iou = pairwise_mask_iou(soft_masks) if boxes is None else pairwise_box_iou(
                box_convert(boxes.detach().float(), "cxcywh", "xyxy"))
            everyone = torch.ones_like(objectness, dtype=torch.bool)
            duplicate = ~suppress_duplicate_queries(iou, objectness, everyone, a.duplicate_iou)
        valid = detected_queries(objectness, a.object_threshold, a.min_relation_objects, duplicate)
        if graph is None:
            graph = self._graph(soft_masks, boxes, inst.query_feats.detach(), valid)
        nodes = self.rgt(inst.query_feats, graph, valid)
        unit = F.normalize(nodes, dim=-1)
        S = unit @ unit.transpose(1, 2)
        min_pairs = a.max_pairs if self.config.inference.all_pairs else a.min_pairs  # all: eq. 13's gate off
        pairs, pair_valid = select_relation_pairs(S.detach(), a.eta, a.max_pairs, valid, min_pairs)
        rel_feats = self.relation_decoder(self.query_builder(nodes, pairs), pyramid, pair_valid)
        rel_logits = self.predicate_classifier(rel_feats, pred_text)
        pooled_obj, pooled_rel = self._pooled_logits(dense_clip, soft_masks, boxes, pairs, obj_text, pred_text)
        return {
            "mask_logits": inst.mask_logits,
            "boxes": boxes,
            "head_boxes": head_boxes,
            "query_feats": inst.query_feats,
            "class_logits": class_logits,
            "aux": aux,
            "aux_boxes": aux_boxes,
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

    def _graph(self, soft_masks: Tensor, boxes: Tensor | None, query_feats: Tensor, valid: Tensor) -> Tensor:
        """Spatial-semantic graph `[B,Q,Q]`: spatial edges of the masks `[B,Q,H,W]` > 0.5, or of the boxes
        `[B,Q,4]` (box task) in the mask-resolution frame, so `graph_dilation` means the same in pixels."""
        a = self.config.architecture
        if boxes is None:
            return spatial_semantic_graph(soft_masks > 0.5, query_feats, a.graph_dilation, a.semantic_threshold,
                                          valid)
        return box_spatial_semantic_graph(boxes.detach(), query_feats, a.graph_dilation, a.semantic_threshold,
                                          valid, size=tuple(soft_masks.shape[-2:]))

    @torch.no_grad()
    def _pooled_logits(self, dense_clip: Tensor | None, soft_masks: Tensor, boxes: Tensor | None, pairs: Tensor,
                       obj_text: Tensor, pred_text: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Pooled CLIP second opinion: the dense CLIP map pooled inside each instance region (soft mask, or box
        rasterised at the map's resolution) -> `[B,Q,C_obj]`, and inside each pair's union region (union of the
        masks, or union box) -> `[B,P,C_pred]`. `(None, None)` without a map or with pooled logits off."""
        inf = self.config.inference
        if dense_clip is None or not inf.use_pooled_logits:
            return None, None
        dense = dense_clip.to(soft_masks.dtype)
        if boxes is None:
            regions, unions = soft_masks, pair_union_masks(soft_masks, pairs)
        else:
            xyxy = box_convert(boxes.detach().float(), "cxcywh", "xyxy")
            size = tuple(dense.shape[-2:])
            regions, unions = box_masks(xyxy, size), union_box_masks(xyxy, pairs, size)
        pooled_obj = pooled_logits(mask_pool(dense, regions), obj_text, inf.pooled_temperature)
        pooled_rel = pooled_logits(mask_pool(dense, unions), pred_text, inf.pooled_temperature)
        return pooled_obj, pooled_rel

    def _instance_loss(self, class_logits: Tensor, mask_logits: Tensor, boxes: Tensor | None, targets: list[dict],
                       num_masks: float | None, w: PSGLossWeights
                       ) -> tuple[Tensor, dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        """Match and weigh the instance loss of one decoder output: mask logits `[B,Q,H,W]` (Mask2Former:
        `ce L_ce + bce L_bce + dice L_dice`) or, box task, head boxes `[B,Q,4]` (DETR: `ce L_ce + bbox L_bbox +
        giou L_giou`; boxes from masks: `+ proj L_proj` on the mask logits, and the projection cost in the
        matching). Returns (total, parts, matched indices)."""
        no_object = self.config.criterion.no_object_weight
        if not self.box_task:
            indices = self.matcher(class_logits, mask_logits, targets)
            parts = mask_losses(class_logits, mask_logits, targets, indices, no_object, num_masks)
            total = w.ce * parts["loss_ce"] + w.bce * parts["loss_bce"] + w.dice * parts["loss_dice"]
            return total, parts, indices
        masks = mask_logits if self.boxes_from_masks else None
        indices = self.box_matcher(class_logits, boxes, targets, masks)
        parts = {"loss_ce": classification_loss(class_logits, targets, indices, no_object),
                 **box_losses(boxes, targets, indices, num_masks)}
        total = w.ce * parts["loss_ce"] + w.bbox * parts["loss_bbox"] + w.giou * parts["loss_giou"]
        if masks is not None:
            parts.update(self._box_mask_losses(masks, targets, indices, num_masks))
            total = total + w.proj * parts["loss_proj"] + w.outside * parts["loss_outside"]
        return total, parts, indices

    @staticmethod
    def _box_mask_losses(mask_logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                         num_boxes: float | None) -> dict[str, Tensor]:
        """`loss_proj` (`box_projection_loss`) and `loss_outside` (`box_outside_loss`) over the matched (query
        mask, GT box) pairs of a batch."""
        num_boxes = instance_normaliser(targets, num_boxes)
        src, tgt = matched_pairs(mask_logits, targets, "boxes", indices)
        return {"loss_proj": box_projection_loss(src, tgt, num_boxes),
                "loss_outside": box_outside_loss(src, tgt, num_boxes)}

    def _instance_targets(self, targets: list[dict], size: tuple[int, int], device: torch.device) -> list[dict]:
        """`labels` + the task's geometry on `device`: `masks` resized to the mask resolution `size`, or `boxes`
        (normalised cxcywh, float)."""
        key = "boxes" if self.box_task else "masks"
        out = []
        for b, t in enumerate(targets):
            if key not in t:
                raise ValueError(f"targets[{b}]: the {self.config.architecture.task!r} task needs {key!r}")
            if self.box_task:
                geometry = t["boxes"].float().to(device)
            else:
                geometry = resize_target_masks(t["masks"].to(device), size)
            out.append({"labels": t["labels"].long().to(device), key: geometry})
        return out

    def loss(
        self,
        outputs: dict,
        targets: list[dict],
        weights: PSGLossWeights | dict | None = None,
        num_masks: float | None = None,
    ) -> dict[str, Tensor]:
        """Training loss `L = rel L_rel + rqc L_rqc + mask L_mask` (weights: `weights` over `config.criterion`);
        `L_mask` is the instance loss summed over the decoder outputs: Mask2Former's for masks, DETR's for boxes
        (the key stays `loss_mask`, so callers need not branch on the task).

        Args:
            outputs: `forward` output.
            targets: per image `dict(labels LongTensor [S] (into obj_text), relations LongTensor [R,3]
                (gt_subject, gt_object, predicate into pred_text))` plus, task "masks": `masks [S,Hm,Wm]`
                bool/float at any resolution (resized to the mask resolution); task "boxes": `boxes [S,4]` float
                normalised `(cx, cy, w, h)` (`spade_core.psg.box_head.normalize_boxes`).
            weights: `PSGLossWeights` or a dict of its fields.
            num_masks: normaliser of the mask (or box) losses (default: GT instances in the batch; pass the DDP
                mean).
        Returns dict: `loss`, `loss_rel`, `loss_rqc`, `loss_mask`, and for the final layer `loss_ce` +
            `loss_bce`, `loss_dice` (masks) or `loss_bbox`, `loss_giou` (boxes; + `loss_proj`, `loss_outside` for
            boxes from masks); the same with suffix `_{i}` for every aux output i.
        """
        crit, num_queries = self.config.criterion, self.config.architecture.num_queries
        w = weights if isinstance(weights, PSGLossWeights) else PSGLossWeights(**{**asdict(crit.loss_weights),
                                                                                   **(weights or {})})
        mask_logits = outputs["mask_logits"]
        device = mask_logits.device
        tgts = self._instance_targets(targets, tuple(mask_logits.shape[-2:]), device)
        aux_boxes = outputs["aux_boxes"] if self.box_task else [None] * len(outputs["aux"])
        loss_mask, parts, indices = self._instance_loss(outputs["class_logits"], mask_logits, outputs["head_boxes"],
                                                        tgts, num_masks, w)
        result = dict(parts)
        for i, ((cl, masks), boxes) in enumerate(zip(outputs["aux"], aux_boxes, strict=True)):
            aux_total, aux_parts, _ = self._instance_loss(cl, masks, boxes, tgts, num_masks, w)
            loss_mask = loss_mask + aux_total
            result.update({f"{k}_{i}": v for k, v in aux_parts.items()})

        relations = [t.get("relations", torch.zeros(0, 3, dtype=torch.long)).long().to(device) for t in targets]
        matched_gt = matched_gt_from_indices(indices, num_queries).to(device)
        S = outputs["S"]
        if crit.use_rqc:
            detected = outputs["query_valid"] if crit.rqc_pairs == "detected" else None  # psi 0 where unmatched
            psi, valid = relation_indicator(matched_gt, relations, num_queries, symmetric=True, also_valid=detected)
            loss_rqc = relation_query_loss(S, psi, valid)
        else:
            loss_rqc = S.sum() * 0.0
        rel_logits = outputs["rel_logits"]
        rel_targets = pair_targets(outputs["pairs"], matched_gt, relations, rel_logits.shape[-1] - 1)
        loss_rel = relation_loss(rel_logits, rel_targets, crit.no_relation_weight, outputs["pair_valid"])
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
        """Per-image `dict(masks bool [N,Hi,Wi], labels [N], scores [N], triplets float [T,4])`; box task:
        `boxes float [N,4]` pixel `(x1, y1, x2, y2)` at the image size instead of `masks`. Triplet rows
        `(subject, object, predicate, score)` ranked by `score = s_subj * s_obj * s_pred`: masks, every (pair,
        predicate) (PSG protocol); boxes, graph constraint: one argmax predicate per ordered pair (VG
        protocol). See `postprocess` / `rank_triplets`.

        `image_size`: one `(Hi, Wi)` for the batch or one per image.
        """
        batch = outputs["mask_logits"].shape[0]
        if len(image_size) == 2 and all(isinstance(s, int) for s in image_size):
            sizes = [tuple(image_size)] * batch
        else:
            sizes = [tuple(s) for s in image_size]
        if len(sizes) != batch:
            raise ValueError(f"image_size: expected one (H, W) or {batch} of them, got {len(sizes)}")
        inf = self.config.inference
        return postprocess(outputs, sizes, inf.alpha, inf.use_diffusion_logits, inf.use_pooled_logits,
                           max_triplets, score_threshold, graph_constraint=self.box_task)
