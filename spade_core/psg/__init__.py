"""SPADE's spatial-aware context reasoning model (docs/DESIGN.md §4.3): UNet feature pyramid, Mask2Former-style
instance decoder, spatial-semantic graph, Relation Graph Transformer, relation queries and decoder,
open-vocabulary classifier, losses, and the assembled `SpadePSG` (built from a `SpadePSGConfig`; task "masks"
for PSG, "boxes" for Visual Genome with the DETR box head, matcher and losses)."""

from spade_core.psg.box_graph import box_masks, box_spatial_semantic_graph, union_box_masks
from spade_core.psg.box_head import BoxHead, denormalize_boxes, normalize_boxes
from spade_core.psg.box_losses import box_losses
from spade_core.psg.box_matcher import BoxHungarianMatcher
from spade_core.psg.classifier import OpenVocabClassifier, fuse_probabilities, mask_pool, pooled_logits
from spade_core.psg.config import (
    ArchitectureConfig,
    CriterionConfig,
    InferenceConfig,
    PSGLossWeights,
    SpadePSGConfig,
)
from spade_core.psg.features import FeaturePyramid, UNetFeatureExtractor, unet_blocks
from spade_core.psg.graph import combine_spatial_semantic, dilate_masks, spatial_semantic_graph
from spade_core.psg.instance_decoder import InstanceDecoder, InstanceOutput
from spade_core.psg.mask_losses import (
    classification_loss,
    dice_loss,
    mask_losses,
    resize_target_masks,
    sigmoid_bce_loss,
)
from spade_core.psg.matcher import HungarianMatcher
from spade_core.psg.model import SpadePSG, detected_queries
from spade_core.psg.postprocess import (
    all_predicate_triplets,
    class_scores,
    postprocess,
    rank_triplets,
    restrict_triplets,
)
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
from spade_core.psg.rgt import RelationGraphBlock, RelationGraphTransformer

__all__ = [
    "ArchitectureConfig",
    "BoxHead",
    "BoxHungarianMatcher",
    "CriterionConfig",
    "FeaturePyramid",
    "HungarianMatcher",
    "InferenceConfig",
    "InstanceDecoder",
    "InstanceOutput",
    "OpenVocabClassifier",
    "PSGLossWeights",
    "RelationDecoder",
    "RelationGraphBlock",
    "RelationGraphTransformer",
    "RelationQueryBuilder",
    "SpadePSG",
    "SpadePSGConfig",
    "UNetFeatureExtractor",
    "all_predicate_triplets",
    "box_losses",
    "box_masks",
    "box_spatial_semantic_graph",
    "class_scores",
    "classification_loss",
    "combine_spatial_semantic",
    "denormalize_boxes",
    "detected_queries",
    "dice_loss",
    "dilate_masks",
    "fuse_probabilities",
    "mask_losses",
    "mask_pool",
    "matched_gt_from_indices",
    "normalize_boxes",
    "pair_targets",
    "pair_union_masks",
    "pooled_logits",
    "postprocess",
    "rank_triplets",
    "relation_indicator",
    "relation_loss",
    "relation_query_loss",
    "resize_target_masks",
    "restrict_triplets",
    "select_relation_pairs",
    "sigmoid_bce_loss",
    "spatial_semantic_graph",
    "suppress_duplicate_queries",
    "unet_blocks",
    "union_box_masks",
]
