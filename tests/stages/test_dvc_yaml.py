"""dvc.yaml and the stage modules agree: every stage declares exactly the params its code may read."""

import importlib
from pathlib import Path

import yaml

from pipeline.params import Params, ScopedParams
from stages.cli import STAGES

REPO = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_stage_order_and_commands():
    assert list(DVC["stages"]) == list(STAGES)
    for name, stage in DVC["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"


def test_declared_params_match_stage_modules():
    for name, stage in DVC["stages"].items():
        module = importlib.import_module(f"stages.{name}")
        assert sorted(stage["params"]) == sorted(module.PARAMS), name


def test_declared_params_exist_in_schema():
    p = Params()
    for stage in DVC["stages"].values():
        for key in stage["params"]:
            obj = p
            for part in key.split("."):
                fields = type(obj).model_fields
                field = part if part in fields else next(f for f, i in fields.items() if i.alias == part)
                obj = getattr(obj, field)
            # and the scoped view lets the stage read it
            view = ScopedParams(p, stage["params"])
            for part in key.split("."):
                view = getattr(view, part)


def test_train_param_change_does_not_touch_upstream_stages():
    upstream = ["prepare", "models", "invert", "calibrate"]
    for name in upstream:
        assert not any(k == "train" or k.startswith("train.") for k in DVC["stages"][name]["params"])
