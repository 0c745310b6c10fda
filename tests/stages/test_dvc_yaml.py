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


def test_code_deps_cover_every_imported_file():
    """Editing any file a stage imports (transitively, lazy imports included) must rerun the stage."""
    from pipeline.codedeps import check_stages

    reports = check_stages(DVC["stages"], REPO)
    assert set(reports) == set(DVC["stages"])
    problems = {name: r.missing + [d for d, why in r.extra.items() if why == "does not exist"]
                for name, r in reports.items()}
    assert all(not p for p in problems.values()), (
        f"code deps that dvc.yaml misses or lists but do not exist: {problems}; "
        "run `python -m pipeline.codedeps --write`")


def test_code_deps_are_exactly_what_codedeps_writes():
    """No stale or broader-than-needed code deps either (what `python -m pipeline.codedeps --check` checks)."""
    from pipeline.codedeps import check_stages, format_reports

    reports = check_stages(DVC["stages"], REPO)
    assert all(r.ok for r in reports.values()), format_reports(reports)


def test_teacher_stages_are_neither_frozen_nor_code_dependent():
    """teacher/dvc.yaml retrains the shipped models only when asked (`dvc repro -f`): no code deps (an edit of the
    training code must not make `dvc repro` retrain them), and not frozen (DVC warns on every command about a
    frozen stage)."""
    teacher = yaml.safe_load((REPO / "teacher" / "dvc.yaml").read_text())["stages"]
    assert set(teacher) == {"train_teacher", "train_clip"}
    for name, stage in teacher.items():
        assert not stage.get("deps") and not stage.get("frozen"), name
        assert [next(iter(o)) for o in stage["outs"]] == [f"teacher/{'weights' if name == 'train_teacher' else 'clip'}"]


def test_models_stage_depends_on_the_weight_params():
    """The weights themselves are deps (templated from params.yaml), not only their paths as params."""
    deps = DVC["stages"]["models"]["deps"]
    assert "${model.sd_path}" in deps and "${model.clip_checkpoint}" in deps
