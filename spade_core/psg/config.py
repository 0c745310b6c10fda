"""Typed configuration of `SpadePSG`: what the model is built from and what its checkpoints record.

`SpadePSGConfig` = `ArchitectureConfig` (the modules and the query / graph / pair selection of `forward`)
+ `CriterionConfig` (matching and training loss) + `InferenceConfig` (class-score fusion at `predict`).
All are frozen dataclasses; `to_dict()` gives plain JSON-ready data and `from_dict()` rebuilds the config
from it (strict: an unknown or a missing key, defaulted fields included, is an error, so a checkpoint never
silently loads with other settings, e.g. after a design constant changed). The one exception: the fields a
section lists in ``ADDED_KEYS``, added after configs were first saved, may be missing; they then take their
defaults, which reproduce the behaviour of the code that wrote the dict (e.g. ``task="masks"``).

Defaults: the fields the pipeline's ``params.yaml`` sets (``pipeline.params``, the one user-facing source of
their defaults) have **no** default here and must be given; only the design constants that no parameter
exposes (pyramid levels, relation-decoder depth, matching costs, ...) have defaults, and they live here only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

_T = TypeVar("_T")

TASKS = ("masks", "boxes")
BOX_SOURCES = ("head", "mask")
RQC_PAIRS = ("matched", "detected")


def _from_mapping(cls: type[_T], raw: Any, where: str, **converted: Any) -> _T:
    """``cls(**raw)`` with errors naming ``where`` and the offending keys; the fields in ``cls.ADDED_KEYS`` may be
    missing (their defaults)."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (expected {names})")
    added = getattr(cls, "ADDED_KEYS", frozenset())
    # strict, defaults included: what was saved is what loads (keys added later default to the old behaviour)
    missing = [n for n in names if n not in raw and n not in added]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    return cls(**{**raw, **converted})


class _Section:
    """``to_dict`` / ``from_dict`` of a flat config dataclass; ``SECTION`` names it in error messages;
    ``ADDED_KEYS``: the fields a saved dict may lack (added later; their defaults keep the old behaviour)."""

    SECTION: ClassVar[str]
    ADDED_KEYS: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[_T], raw: Mapping[str, Any]) -> _T:
        return _from_mapping(cls, raw, cls.SECTION)


@dataclass(frozen=True)
class PSGLossWeights(_Section):
    """`L = rel * L_rel + rqc * L_rqc + mask * L_mask`, `L_mask` the instance loss summed over decoder outputs:
    task "masks": `ce * L_ce + bce * L_bce + dice * L_dice` (Mask2Former's 2 / 5 / 5); task "boxes":
    `ce * L_ce + bbox * L_bbox + giou * L_giou` (DETR's L1 and GIoU weights 5 / 2), `+ proj * L_proj + outside *
    L_outside` (BoxInst's projection term and the outside-box negatives on the mask logits, weighted like
    Mask2Former's dice and BCE) when the boxes come from the masks."""

    rel: float
    rqc: float
    mask: float
    ce: float = 2.0
    bce: float = 5.0
    dice: float = 5.0
    bbox: float = 5.0
    giou: float = 2.0
    proj: float = 5.0
    outside: float = 5.0

    SECTION: ClassVar[str] = "loss_weights"
    ADDED_KEYS: ClassVar[frozenset[str]] = frozenset({"bbox", "giou", "proj", "outside"})


@dataclass(frozen=True)
class ArchitectureConfig(_Section):
    """The modules and the query / graph / relation-pair selection of `SpadePSG.forward`.

    Args:
        feature_channels: channels of the UNet block features (`UNetFeatureExtractor.channels`).
        clip_dim: E, width of the CLIP text embeddings and of the dense CLIP map.
        hidden_dim, num_queries, num_heads: D, Q, attention heads of every decoder / RGT layer.
        decoder_layers: depth of the instance decoder Phi_ins.
        rgt_blocks: RGT depth (0: no RGT, the instance features go straight to S).
        use_lcnl, use_lcnnl, use_lcl: RGT parts (paper Table 6).
        graph_dilation, semantic_threshold: spatial-semantic graph construction (dilation in pixels of the mask
            logits; the box task measures its boxes in that frame too).
        eta, max_pairs, min_pairs: eq. 13's pair selection: the pairs with `S_ij > eta` become relation queries
            (at most `max_pairs` = P); when fewer pass, the best-scoring ones fill up to `min_pairs` (so early in
            training there are pairs to learn from).
        num_levels, relation_layers: pyramid levels and relation-decoder depth (4, 3).
        object_threshold, min_relation_objects: queries with objectness `1 - p(no object)` above the threshold
            (and at least the `min_relation_objects` most object-like ones) form the graph and the pairs;
            the others (predicted "no object", with near-identical features) would crowd out the real pairs.
        duplicate_iou: queries whose region (box or mask) has an IoU above this with a more object-like query
            are not detected (`suppress_duplicate_queries`, `detected_queries`; they rank last for the
            `min_relation_objects` floor); None: none dropped.
        task: what an instance is: "masks" (PSG: Mask2Former mask prediction, masked cross-attention) or
            "boxes" (Visual Genome: DETR box prediction by a `BoxHead`, unmasked cross-attention).
        box_source: task "boxes": where the predicted boxes come from: "head" (the DETR `BoxHead`'s regression,
            the paper's VG model) or "mask" (the tight box of the query's mask, which is supervised by BoxInst's
            projection term and outside-box negatives, `box_projection`; the head is still trained and fills in
            for an empty mask; the cross-attention is masked as in Mask2Former, since the masks now mean
            something).
    """

    feature_channels: tuple[int, ...]
    clip_dim: int
    hidden_dim: int
    num_queries: int
    num_heads: int
    decoder_layers: int
    rgt_blocks: int
    use_lcnl: bool
    use_lcnnl: bool
    use_lcl: bool
    graph_dilation: int
    semantic_threshold: float
    eta: float
    max_pairs: int
    min_pairs: int
    duplicate_iou: float | None = None
    # design constants (not in params.yaml)
    num_levels: int = 4
    relation_layers: int = 3
    object_threshold: float = 0.5
    min_relation_objects: int = 4
    task: str = "masks"
    box_source: str = "head"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {list(BOX_SOURCES)}, got {self.box_source!r}")
        if isinstance(self.feature_channels, (str, bytes)) or not isinstance(self.feature_channels, Sequence):
            raise TypeError(f"feature_channels must be a sequence of ints, got {self.feature_channels!r}")
        object.__setattr__(self, "feature_channels", tuple(int(c) for c in self.feature_channels))
        if not self.feature_channels:
            raise ValueError("feature_channels must name at least one feature map")
        if not 0 <= self.min_pairs <= self.max_pairs:
            raise ValueError(f"min_pairs must be in [0, max_pairs={self.max_pairs}], got {self.min_pairs}")
        if self.duplicate_iou is not None and not 0.0 < self.duplicate_iou <= 1.0:
            raise ValueError(f"duplicate_iou must be in (0, 1] or None, got {self.duplicate_iou}")

    SECTION: ClassVar[str] = "architecture"
    ADDED_KEYS: ClassVar[frozenset[str]] = frozenset({"task", "duplicate_iou", "box_source"})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "feature_channels": list(self.feature_channels)}


@dataclass(frozen=True)
class CriterionConfig(_Section):
    """Hungarian matching and the training loss (`SpadePSG.loss`).

    Args:
        use_rqc: include L_rqc in the loss.
        rqc_pairs: the query pairs L_rqc is taken over: "matched" (both queries matched to GT instances) or
            "detected" (also every pair of queries taking part in pair selection, `SpadePSG` output
            `query_valid`; a pair with an unmatched query has target 0, so spurious detections learn to stay out
            of eq. 13).
        no_object_weight: CE weight of the "no object" class.
        loss_weights: `PSGLossWeights`.
        no_relation_weight: CE weight of the "no relation" class.
        cost_class, cost_mask, cost_dice: Hungarian matching costs (task "masks").
        cost_bbox, cost_giou: box L1 and -GIoU matching costs (task "boxes", with cost_class; DETR's 5 / 2).
        cost_proj: BoxInst projection matching cost (task "boxes" with `box_source` "mask"; like cost_dice).
        deep_supervision: match + instance losses on every earlier decoder output too.
    """

    use_rqc: bool
    no_object_weight: float
    loss_weights: PSGLossWeights
    no_relation_weight: float = 0.1
    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    deep_supervision: bool = True
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    rqc_pairs: str = "matched"
    cost_proj: float = 5.0

    def __post_init__(self) -> None:
        if self.rqc_pairs not in RQC_PAIRS:
            raise ValueError(f"rqc_pairs must be one of {list(RQC_PAIRS)}, got {self.rqc_pairs!r}")
        if not isinstance(self.loss_weights, PSGLossWeights):
            raise TypeError(f"loss_weights must be a PSGLossWeights, got {type(self.loss_weights).__name__}")

    SECTION: ClassVar[str] = "criterion"
    ADDED_KEYS: ClassVar[frozenset[str]] = frozenset({"cost_bbox", "cost_giou", "rqc_pairs", "cost_proj"})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CriterionConfig:
        weights = raw.get("loss_weights") if isinstance(raw, Mapping) else None
        extra = {"loss_weights": PSGLossWeights.from_dict(weights)} if isinstance(weights, Mapping) else {}
        return _from_mapping(cls, raw, cls.SECTION, **extra)


@dataclass(frozen=True)
class InferenceConfig(_Section):
    """Class scores at inference (`SpadePSG.predict`, and whether `forward` computes the pooled logits).

    Args:
        alpha: fusion weight of the decoder classifier, `P = P_diff^alpha * P_pool^(1-alpha)`.
        use_diffusion_logits, use_pooled_logits: classification sources (paper Table 7); the decoder
            classifier is always trained (matching needs it) and always gives the objectness.
        pooled_temperature: logit scale of the pooled CLIP classification (CLIP's 100).
        all_pairs: every ordered pair of detected queries (up to `max_pairs`) becomes a relation query, not only
            those whose `S_ij` passes eq. 13's `eta` (not the paper's method; an evaluation setting: training
            keeps eq. 13).
    """

    alpha: float
    use_diffusion_logits: bool
    use_pooled_logits: bool
    pooled_temperature: float = 100.0
    all_pairs: bool = False

    def __post_init__(self) -> None:
        if not (self.use_diffusion_logits or self.use_pooled_logits):
            raise ValueError("use_diffusion_logits and use_pooled_logits cannot both be False")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    SECTION: ClassVar[str] = "inference"
    ADDED_KEYS: ClassVar[frozenset[str]] = frozenset({"all_pairs"})


@dataclass(frozen=True)
class SpadePSGConfig:
    """Everything `SpadePSG` is built from: `SpadePSG(config)`; `SpadePSG(SpadePSGConfig.from_dict(
    model.config.to_dict()))` rebuilds the same model (JSON round trip)."""

    architecture: ArchitectureConfig
    criterion: CriterionConfig
    inference: InferenceConfig

    def __post_init__(self) -> None:
        for name, kind in (("architecture", ArchitectureConfig), ("criterion", CriterionConfig),
                           ("inference", InferenceConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict ``{"architecture": ..., "criterion": ..., "inference": ...}``."""
        return {
            "architecture": self.architecture.to_dict(),
            "criterion": self.criterion.to_dict(),
            "inference": self.inference.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SpadePSGConfig:
        """Inverse of `to_dict` (strict: unknown or missing keys raise `ValueError`)."""
        if not isinstance(raw, Mapping):
            raise TypeError(f"SpadePSG config: expected a mapping, got {type(raw).__name__}")
        sections = {"architecture": ArchitectureConfig, "criterion": CriterionConfig, "inference": InferenceConfig}
        unknown, missing = sorted(set(raw) - set(sections)), [s for s in sections if s not in raw]
        if unknown or missing:
            raise ValueError(f"SpadePSG config: expected sections {list(sections)}; unknown {unknown}, "
                             f"missing {missing}")
        return cls(**{name: kind.from_dict(raw[name]) for name, kind in sections.items()})
