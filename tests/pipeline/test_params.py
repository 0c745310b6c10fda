from pathlib import Path

import pytest
import yaml

from pipeline.params import (
    Params,
    ParamsError,
    ScopedParams,
    UndeclaredParamError,
    default_params_dict,
    load_params,
    parse_params,
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
        ({"model": {"rgt": {"num_blocks": 0}}}, "model.rgt.num_blocks"),
        ({"calibrate": {"lambda": 0}}, "calibrate.lambda"),
        ({"prepare": {"synthetic": {"min_objects": 5, "max_objects": 2}}}, "min_objects must be <="),
        ({"data": {"source": "psg"}}, "data.source=psg needs data.psg_json"),
        ({"model": {"preset": "sd"}}, "model.preset=sd needs model.sd_path"),
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
