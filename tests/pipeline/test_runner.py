"""``pipeline.runner``: the ``python -m stages.<name>`` entry and the scoped params of ``spade <stage>``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.params import UndeclaredParamError
from pipeline.runner import exit_on, run_stage, stage_main


def test_stage_main_runs_with_the_declared_params(tmp_path):
    (tmp_path / "p.yaml").write_text("data: {split: ovr}\n")
    seen = []
    stage_main("demo", ("data.split",), seen.append, ["--params", str(tmp_path / "p.yaml")])
    assert seen[0].data.split == "ovr"
    with pytest.raises(UndeclaredParamError):
        _ = seen[0].data.source


def test_invalid_params_exit_2_with_the_message(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("data: {split: nope}\n")
    with pytest.raises(SystemExit) as ex:
        stage_main("demo", ("data",), lambda p: None, ["-p", str(tmp_path / "p.yaml")])
    assert ex.value.code == 2
    assert "data.split" in capsys.readouterr().err
    module = SimpleNamespace(PARAMS=("data",), run=lambda p: None)
    with pytest.raises(SystemExit) as ex:
        run_stage(module, tmp_path / "missing.yaml")
    assert ex.value.code == 2 and "params file not found" in capsys.readouterr().err


def test_run_stage_uses_the_module_params(tmp_path):
    (tmp_path / "p.yaml").write_text("invert: {num_steps: 3}\n")
    seen = []
    run_stage(SimpleNamespace(PARAMS=("invert",), run=seen.append), tmp_path / "p.yaml")
    assert seen[0].invert.num_steps == 3


def test_exit_on_turns_expected_errors_into_a_message_and_status(capsys):
    with pytest.raises(SystemExit) as ex, exit_on(KeyError, ValueError):
        raise ValueError("bad vocabulary")
    assert ex.value.code == 1 and capsys.readouterr().err == "error: bad vocabulary\n"
    with pytest.raises(RuntimeError), exit_on(KeyError):
        raise RuntimeError("unexpected errors pass through")

