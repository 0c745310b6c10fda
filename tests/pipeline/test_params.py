import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.params import (
    Params,
    ParamsError,
    ScopedParams,
    UndeclaredParamError,
    default_params_dict,
    load_params,
    parse_params,
)
from pipeline.psg_model import TRAINING_INFERENCE, build_psg_model, inference_config, psg_config, save_trained
from spade_core.psg import (
    ArchitectureConfig,
    CriterionConfig,
    InferenceConfig,
    PSGLossWeights,
    SpadePSG,
    SpadePSGConfig,
)

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every section of the schema is spelled out in the committed file
    assert set(raw) == set(Params.model_fields)
    assert isinstance(params, Params)


def test_defaults_round_trip():
    assert parse_params(default_params_dict()) == Params()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"lr": -1.0}}, "train.lr: Input should be greater than 0"),
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"invert": {"method": "euler"}}, "invert.method"),
        ({"model": {"rgt": {"num_blocks": -1}}}, "model.rgt.num_blocks"),
        ({"model": {"relation": {"max_pairs": 4, "min_pairs": 5}}}, "min_pairs=5 must be <= max_pairs=4"),
        ({"evaluate": {"use_diffusion_logits": False, "use_pooled_logits": False}}, "evaluate.use_diffusion"),
        ({"calibrate": {"lambda": 0}}, "calibrate.lambda"),
        ({"prepare": {"synthetic": {"min_objects": 5, "max_objects": 2}}}, "min_objects must be <="),
        ({"data": {"source": "psg"}}, "data.source=psg needs data.psg_json"),
        ({"data": {"source": "vg"}}, "missing: data.vg_h5, data.vg_dicts, data.vg_image_data, data.image_root"),
        ({"data": {"source": "vg", "vg_h5": "a.h5", "vg_dicts": "d.json", "image_root": "img"}},
         "data: data.source=vg needs data.vg_h5, data.vg_dicts, data.vg_image_data and data.image_root; "
         "missing: data.vg_image_data"),
        ({"data": {"source": "coco"}}, "data.source"),
        ({"prepare": {"synthetic": {"image_format": "gif"}}}, "prepare.synthetic.image_format"),
        ({"model": {"preset": "sd"}}, "model.preset=sd needs model.sd_path"),
        ({"model": {"preset": "sd", "sd_path": "/w/sd", "clip_arch": "ViT-B-32"}}, "the defaults name the embedded"),
        ({"model": {"sd_path": ""}}, "model.sd_path"),
        ({"invert": {"attn_layers": ["down", "down"]}}, "lists a UNet part twice"),
        ({"invert": {"attn_layers": []}}, "invert.attn_layers"),
        ({"invert": {"attn_layers": ["encoder"]}}, "invert.attn_layers"),
    ],
)
def test_schema_errors_name_the_key(raw, needle):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "p.yaml")
    assert needle in str(err.value)
    assert str(err.value).startswith("p.yaml")


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    top = tmp_path / "top.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(top)


def test_lambda_alias():
    p = parse_params({"calibrate": {"lambda": 2.5}})
    assert p.calibrate.lam == 2.5
    assert default_params_dict()["calibrate"]["lambda"] == 1.0


def test_scoped_params_allow_declared_only():
    scoped = ScopedParams(Params(), ["data.split", "invert"])
    assert scoped.invert.method == "belm"
    assert scoped.data.split == "closed"
    with pytest.raises(UndeclaredParamError, match="data.source"):
        _ = scoped.data.source
    with pytest.raises(UndeclaredParamError, match="'train'"):
        _ = scoped.train
    with pytest.raises(AttributeError):
        scoped.invert = None
    scoped_cal = ScopedParams(Params(), ["calibrate"])
    assert scoped_cal.calibrate.lam == 1.0


# ------------------------------------------------------------------------------ one source of defaults
def test_schema_defaults_equal_the_committed_params_yaml():
    """params.yaml produced the committed results; the schema's defaults are the same values, key for key."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert default_params_dict() == raw
    assert parse_params(raw) == Params()


def test_removed_params_are_rejected():
    with pytest.raises(ParamsError, match="train.num_workers: unknown key"):
        parse_params({"train": {"num_workers": 0}})


# -------------------------------------------------------------------------------------- params -> model
def _state_fingerprint(state: dict) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_params_model_is_bit_identical_to_the_legacy_constructor():
    """``build_psg_model`` on the committed params.yaml after ``torch.manual_seed(0)``: the same state_dict
    (keys in order, dtypes, shapes, every bit) as the old keyword constructor built by ``stages/train.py``
    (fingerprint recorded from it). A change here means a different initialisation: new results. (A torch
    upgrade that changes its init kernels would also change it.)"""
    p = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    model = build_psg_model(p.model, p.train, [32, 64, 64, 3], 32)
    assert _state_fingerprint(model.state_dict()) == (
        "edd8298ea132e6eb80355cd7b28b734a5efb817eba60a40002c6d616bd46055f"
    )


def test_psg_config_takes_every_exposed_value_from_the_params():
    p = parse_params({
        "model": {"hidden_dim": 32, "num_queries": 8, "num_heads": 2, "decoder_layers": 2,
                  "rgt": {"num_blocks": 3, "use_lcnl": False, "use_lcnnl": True, "use_lcl": False},
                  "graph": {"dilation": 5, "semantic_threshold": 0.25},
                  "relation": {"eta": 0.3, "max_pairs": 7, "min_pairs": 2, "duplicate_iou": 0.4}},
        "evaluate": {"alpha": 0.5, "use_diffusion_logits": False, "use_pooled_logits": True},
        "train": {"use_rqc": False, "no_object_weight": 0.2, "loss_weights": {"rel": 0.5, "rqc": 0.1, "mask": 2.0},
                  "rqc_pairs": "matched"},
    })
    cfg = psg_config(p.model, p.train, [8, 16, 3], 12)
    assert cfg.architecture == ArchitectureConfig(
        feature_channels=(8, 16, 3), clip_dim=12, hidden_dim=32, num_queries=8, num_heads=2, decoder_layers=2,
        rgt_blocks=3, use_lcnl=False, use_lcnnl=True, use_lcl=False, graph_dilation=5, semantic_threshold=0.25,
        eta=0.3, max_pairs=7, min_pairs=2, duplicate_iou=0.4,
    )
    assert cfg.criterion == CriterionConfig(use_rqc=False, no_object_weight=0.2, rqc_pairs="matched",
                                            loss_weights=PSGLossWeights(rel=0.5, rqc=0.1, mask=2.0))
    assert cfg.inference == TRAINING_INFERENCE  # the decoder classifier alone: what training optimises
    assert inference_config(p.evaluate) == InferenceConfig(alpha=0.5, use_diffusion_logits=False,
                                                           use_pooled_logits=True)


def test_save_trained_writes_weights_and_config(tmp_path):
    p = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    model = build_psg_model(p.model.model_copy(update={"hidden_dim": 16}), p.train, [8, 3], 8)
    meta = {"backbone": "unet", "feature_blocks": None, "pixel_stride": 4, "feature_channels": [8, 3], "clip_dim": 8,
            "image_size": 64, "identity": {"teacher": "t", "clip": "c", "student": "s"}, "steps": 3}
    out = tmp_path / "train"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    save_trained(out, model, meta)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["train"]  # no temporary folder left behind
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors"]
    text = (out / "config.json").read_text()
    config = json.loads(text)
    assert text == json.dumps(config, indent=2) + "\n"
    assert list(config) == ["model", *meta] and {k: config[k] for k in meta} == meta
    assert SpadePSGConfig.from_dict(config["model"]) == model.config
    state = load_file(str(out / "model.safetensors"))
    assert sorted(state) == sorted(model.state_dict())  # safetensors stores the keys sorted
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    rebuilt = SpadePSG(SpadePSGConfig.from_dict(config["model"]))
    rebuilt.load_state_dict(state)
    with pytest.raises(ValueError, match="'model' key"):
        save_trained(out, model, {**meta, "model": {}})
    with pytest.raises(ValueError, match="identity"):
        save_trained(out, model, {k: v for k, v in meta.items() if k != "identity"})


def test_load_trained_rebuilds_the_saved_model(tmp_path, monkeypatch):
    """save_trained -> load_trained with the heavy parts (student, frozen features) replaced by stand-ins."""
    from pipeline import psg_model

    p = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    model = build_psg_model(p.model.model_copy(update={"hidden_dim": 16}), p.train, [8, 3], 8)
    identity = {"teacher": "t", "clip": "c", "student": "s"}
    meta = {"backbone": "unet", "feature_blocks": [1], "pixel_stride": 4, "image_size": 64, "identity": identity}
    save_trained(tmp_path / "train", model, meta)

    channels = [8, 3]

    class Features:
        def __init__(self, models, student, blocks, pixel_stride, backbone):
            assert (blocks, pixel_stride, backbone) == ([1], 4, "unet")
            self.channels = list(channels)

    monkeypatch.setattr(psg_model, "tree_digest", lambda path: "s")
    monkeypatch.setattr(psg_model, "load_student", lambda models, path: SimpleNamespace(unet=torch.nn.Linear(1, 1)))
    monkeypatch.setattr(psg_model, "FrozenFeatures", Features)
    models = SimpleNamespace(teacher_identity="t", clip_identity="c", clip=SimpleNamespace(embed_dim=8))
    inference = psg_model.inference_config(p.evaluate)
    trained = psg_model.load_trained(models, inference, tmp_path / "train", tmp_path / "calibrate")
    assert trained.model.config.architecture == model.config.architecture and not trained.model.training
    assert model.config.inference == psg_model.TRAINING_INFERENCE and trained.model.config.inference == inference
    assert trained.config["image_size"] == 64
    state = trained.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    with pytest.raises(ValueError, match="trained with clip c"):
        psg_model.load_trained(SimpleNamespace(**{**vars(models), "clip_identity": "other"}),
                               psg_model.TRAINING_INFERENCE, tmp_path / "train")
    channels = [16, 3]
    with pytest.raises(ValueError, match=r"trained on features \[8, 3\]"):
        psg_model.load_trained(models, psg_model.TRAINING_INFERENCE, tmp_path / "train")
    config = json.loads((tmp_path / "train/config.json").read_text())
    config["model"] = {"hidden_dim": 16}  # a pre-config (flat keyword) checkpoint
    (tmp_path / "train/config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rerun `train`"):
        psg_model.load_trained(models, psg_model.TRAINING_INFERENCE, tmp_path / "train")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"model": {"image_size": 100}},
         "model.image_size: must be a multiple of the VAE downsampling factor 8 (got 100)"),
        ({"model": {"hidden_dim": 30, "num_heads": 4}}, "model.hidden_dim=30 must be divisible by model.num_heads=4"),
        ({"calibrate": {"batch_size": 8, "micro_batch": 3}},
         "calibrate.micro_batch=3 must divide calibrate.batch_size=8"),
        ({"calibrate": {"read_block": 48}, "invert": {"shard_size": 128}},
         "calibrate.read_block=48 must divide the store's shard size 128 (invert.shard_size) or be a multiple"),
    ],
)  # fmt: skip
def test_constraints_that_failed_in_a_later_stage_are_checked_up_front(raw, needle):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "p.yaml")
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "raw",
    [{"model": {"image_size": 96}}, {"calibrate": {"read_block": 256}, "invert": {"shard_size": 128}},
     {"calibrate": {"batch_size": 8, "micro_batch": 4}},
     {"data": {"source": "vg", "vg_h5": "a.h5", "vg_dicts": "d.json", "vg_image_data": "i.json", "image_root": "x"}},
     {"data": {"source": "synthetic-vg"}, "prepare": {"synthetic": {"image_format": "jpg"}}}],
)  # fmt: skip
def test_valid_combinations_pass(raw):
    parse_params(raw)


def test_missing_sections_are_named_in_one_warning(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_params(empty) == Params()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"{empty}: is empty; using the schema defaults" in err
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({k: v for k, v in default_params_dict().items() if k not in ("train", "data")}))
    load_params(partial)
    load_params(partial)  # once per file, not once per load
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"{partial}: has no section data, train;" in err
    load_params(REPO / "params.yaml")
    assert capsys.readouterr().err == ""


def test_unreadable_or_too_deep_params_file_is_a_params_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ParamsError, match="deep.yaml: not valid YAML"):
        load_params(deep)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ParamsError, match="bin.yaml: params file not readable"):
        load_params(binary)
