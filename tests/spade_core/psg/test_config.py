import dataclasses
import json

import pytest

from spade_core.psg.config import (
    ArchitectureConfig,
    CriterionConfig,
    InferenceConfig,
    PSGLossWeights,
    SpadePSGConfig,
)
from spade_core.psg.model import SpadePSG

from .conftest import make_psg_config


def test_json_round_trip():
    config = make_psg_config([32, 64], 16, use_lcl=False, eta=0.3, deep_supervision=False,
                             loss_weights=PSGLossWeights(rel=0.5, rqc=0.1, mask=2.0, dice=4.0))
    raw = json.loads(json.dumps(config.to_dict()))
    assert list(raw) == ["architecture", "criterion", "inference"]
    assert raw["architecture"]["feature_channels"] == [32, 64]
    assert raw["criterion"]["loss_weights"] == {"rel": 0.5, "rqc": 0.1, "mask": 2.0, "ce": 2.0, "bce": 5.0,
                                                "dice": 4.0, "bbox": 5.0, "giou": 2.0, "proj": 5.0,
                                                "outside": 5.0}
    back = SpadePSGConfig.from_dict(raw)
    assert back == config
    assert isinstance(back.architecture.feature_channels, tuple)
    assert isinstance(back.criterion.loss_weights, PSGLossWeights)


def test_configs_are_frozen_and_coerce_channels():
    config = make_psg_config([32, 64])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.architecture.hidden_dim = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.criterion.loss_weights.rel = 2.0
    assert config.architecture.feature_channels == (32, 64)
    with pytest.raises(TypeError, match="feature_channels"):
        dataclasses.replace(config.architecture, feature_channels=32)
    with pytest.raises(ValueError, match="at least one"):
        dataclasses.replace(config.architecture, feature_channels=[])


def test_params_set_fields_have_no_defaults_here():
    """Fields that params.yaml sets take their defaults from pipeline.params only: none here."""
    from_params = {
        ArchitectureConfig: {"feature_channels", "clip_dim", "hidden_dim", "num_queries", "num_heads",
                             "decoder_layers", "rgt_blocks", "use_lcnl", "use_lcnnl", "use_lcl", "graph_dilation",
                             "semantic_threshold", "eta", "max_pairs", "min_pairs"},
        CriterionConfig: {"use_rqc", "no_object_weight", "loss_weights"},
        InferenceConfig: {"alpha", "use_diffusion_logits", "use_pooled_logits"},
        PSGLossWeights: {"rel", "rqc", "mask"},
    }
    for cls, names in from_params.items():
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        assert required == names, cls.__name__


def test_validation():
    with pytest.raises(ValueError, match="cannot both be False"):
        make_psg_config([8], use_diffusion_logits=False, use_pooled_logits=False)
    with pytest.raises(ValueError, match="alpha"):
        make_psg_config([8], alpha=1.5)
    with pytest.raises(TypeError, match="loss_weights"):
        make_psg_config([8], loss_weights={"rel": 1.0, "rqc": 0.6, "mask": 1.0})
    with pytest.raises(TypeError, match="SpadePSGConfig"):
        SpadePSG({"architecture": {}})


def test_from_dict_is_strict():
    raw = make_psg_config([8, 16]).to_dict()
    with pytest.raises(ValueError, match=r"architecture: unknown keys \['rgt_depth'\]"):
        SpadePSGConfig.from_dict({**raw, "architecture": {**raw["architecture"], "rgt_depth": 2}})
    arch = {k: v for k, v in raw["architecture"].items() if k != "eta"}
    with pytest.raises(ValueError, match=r"architecture: missing keys \['eta'\]"):
        SpadePSGConfig.from_dict({**raw, "architecture": arch})
    with pytest.raises(ValueError, match=r"missing \['inference'\]"):
        SpadePSGConfig.from_dict({k: v for k, v in raw.items() if k != "inference"})
    with pytest.raises(ValueError, match="unknown"):
        SpadePSGConfig.from_dict({**raw, "hidden_dim": 32})  # a flat (pre-config) checkpoint
    lw = {k: v for k, v in raw["criterion"]["loss_weights"].items() if k != "rqc"}
    with pytest.raises(ValueError, match=r"loss_weights: missing keys \['rqc'\]"):
        SpadePSGConfig.from_dict({**raw, "criterion": {**raw["criterion"], "loss_weights": lw}})
    # strict for defaulted fields too: a checkpoint records every value it was built with
    crit = {k: v for k, v in raw["criterion"].items() if k != "cost_dice"}
    with pytest.raises(ValueError, match=r"criterion: missing keys \['cost_dice'\]"):
        SpadePSGConfig.from_dict({**raw, "criterion": crit})


def test_box_task_fields_and_round_trip():
    config = make_psg_config([32, 64], 16, task="boxes", cost_bbox=4.0, cost_giou=1.5,
                             loss_weights=PSGLossWeights(rel=1.0, rqc=0.5, mask=1.0, bbox=3.0, giou=1.0))
    raw = json.loads(json.dumps(config.to_dict()))
    assert raw["architecture"]["task"] == "boxes"
    assert (raw["criterion"]["cost_bbox"], raw["criterion"]["cost_giou"]) == (4.0, 1.5)
    assert (raw["criterion"]["loss_weights"]["bbox"], raw["criterion"]["loss_weights"]["giou"]) == (3.0, 1.0)
    assert SpadePSGConfig.from_dict(raw) == config
    defaults = make_psg_config([8])
    assert defaults.architecture.task == "masks"
    assert (defaults.criterion.cost_bbox, defaults.criterion.cost_giou) == (5.0, 2.0)  # DETR
    assert (defaults.criterion.loss_weights.bbox, defaults.criterion.loss_weights.giou) == (5.0, 2.0)
    with pytest.raises(ValueError, match=r"task must be one of \['masks', 'boxes'\], got 'segments'"):
        make_psg_config([8], task="segments")


def test_dicts_saved_before_the_box_task_load_with_defaults():
    """A dict without the box task's keys (written before they existed) loads as the mask model it was."""
    config = make_psg_config([8, 16], eta=0.3)
    raw = config.to_dict()
    old = {
        "architecture": {k: v for k, v in raw["architecture"].items() if k not in ("task", "duplicate_iou")},
        "criterion": {**{k: v for k, v in raw["criterion"].items() if k not in ("cost_bbox", "cost_giou")},
                      "loss_weights": {k: v for k, v in raw["criterion"]["loss_weights"].items()
                                       if k not in ("bbox", "giou")}},
        "inference": raw["inference"],
    }
    assert SpadePSGConfig.from_dict(old) == config
    assert config.architecture.duplicate_iou is None  # no suppression, as before it existed
    with pytest.raises(ValueError, match=r"duplicate_iou must be in \(0, 1\] or None, got 0.0"):
        make_psg_config([8], duplicate_iou=0.0)
    # only the added keys may be missing; the added ones given explicitly are used
    boxes = {**raw, "architecture": {**raw["architecture"], "task": "boxes"}}
    assert SpadePSGConfig.from_dict(boxes).architecture.task == "boxes"
    with pytest.raises(ValueError, match=r"criterion: missing keys \['cost_mask'\]"):
        SpadePSGConfig.from_dict({**old, "criterion": {k: v for k, v in old["criterion"].items() if k != "cost_mask"}})
