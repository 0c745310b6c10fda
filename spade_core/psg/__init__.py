"""SPADE's spatial-aware context reasoning model (docs/DESIGN.md §4.3): UNet feature pyramid, Mask2Former-style
instance decoder, spatial-semantic graph, Relation Graph Transformer, relation queries and decoder,
open-vocabulary classifier, losses, and the assembled `SpadePSG` (built from a `SpadePSGConfig`)."""

from spade_core.psg.classifier import OpenVocabClassifier, fuse_probabilities, mask_pool, pooled_logits
from spade_core.psg.config import (
    ArchitectureConfig,
    CriterionConfig,
    InferenceConfig,
    PSGLossWeights,
    SpadePSGConfig,
)
from spade_core.psg.features import FeaturePyramid, UNetFeatureExtractor, unet_blocks
from spade_core.psg.graph import dilate_masks, spatial_semantic_graph
from spade_core.psg.instance_decoder import InstanceDecoder, InstanceOutput
from spade_core.psg.mask_losses import dice_loss, mask_losses, resize_target_masks, sigmoid_bce_loss
from spade_core.psg.matcher import HungarianMatcher
from spade_core.psg.model import SpadePSG, detected_queries
from spade_core.psg.postprocess import class_scores, postprocess, rank_triplets
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
)
from spade_core.psg.rgt import RelationGraphBlock, RelationGraphTransformer

__all__ = [
    "ArchitectureConfig",
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
    "class_scores",
    "detected_queries",
    "dice_loss",
    "dilate_masks",
    "fuse_probabilities",
    "mask_losses",
    "mask_pool",
    "matched_gt_from_indices",
    "pair_targets",
    "pair_union_masks",
    "pooled_logits",
    "postprocess",
    "rank_triplets",
    "relation_indicator",
    "relation_loss",
    "relation_query_loss",
    "resize_target_masks",
    "select_relation_pairs",
    "sigmoid_bce_loss",
    "spatial_semantic_graph",
    "unet_blocks",
]
