"""``pipeline.runner``: the ``python -m stages.<name>`` entry and the scoped params of ``spade <stage>``."""

from __future__ import annotations

import os
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



# ------------------------------------------------------------------------------ one-line errors, exit codes
def _raiser(err):
    def run(_params):
        raise err

    return run


def _errors():
    from pipeline.datasets.psg import DatasetError
    from pipeline.io import OutputNotWritableError
    from pipeline.params import ParamsError
    from pipeline.stores import StoreIncompleteError, StoreMismatchError

    return [
        (ParamsError("p.yaml: invalid parameters\n  model.image_size: must be a multiple of 8 (got 100)"), 2,
         "error: p.yaml: invalid parameters: model.image_size: must be a multiple of 8 (got 100)", None),
        (DatasetError("decompression bomb", "42", "data/pan/42.png"), 3,
         "error: image 42: decompression bomb (data/pan/42.png)", None),
        (StoreMismatchError("s.zarr: other settings:\n  method: store has 'belm', current is 'ddim'",
                            hint="delete the store"), 4,
         "error: s.zarr: other settings: method: store has 'belm', current is 'ddim'", "hint: delete the store"),
        (StoreIncompleteError("s.zarr is incomplete"), 4, "error: s.zarr is incomplete", None),
        (OutputNotWritableError("artifacts/calibrate: output is not writable (artifacts: Permission denied)"), 5,
         "error: artifacts/calibrate: output is not writable (artifacts: Permission denied)", "hint: check"),
        (PermissionError(13, "Permission denied", "artifacts/invert/teacher.zarr/zarr.json"), 5,
         "error: artifacts/invert/teacher.zarr/zarr.json: Permission denied", None),
        (FileNotFoundError(2, "No such file or directory", "data/prepared/classes.json"), 1,
         "error: data/prepared/classes.json: No such file or directory", "hint: rerun with"),
        (ValueError("model.image_size=100 is not a multiple of 8"), 1,
         "error: model.image_size=100 is not a multiple of 8", "hint: rerun with"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(8))
def test_known_errors_become_one_line_and_the_exit_code_of_their_class(tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("SPADE_DEBUG", raising=False)
    err, code, line, hint = _errors()[case]
    (tmp_path / "p.yaml").write_text("data: {split: ovr}\n")
    for entry in ("stage_main", "run_stage"):
        with pytest.raises(SystemExit) as ex:
            if entry == "stage_main":
                stage_main("demo", ("data",), _raiser(err), ["-p", str(tmp_path / "p.yaml")])
            else:
                run_stage(SimpleNamespace(PARAMS=("data",), run=_raiser(err)), tmp_path / "p.yaml")
        out = capsys.readouterr().err.splitlines()
        out = [ln for ln in out if not ln.startswith("warning:")]
        assert ex.value.code == code and out[0] == line, out
        assert len(out) == (1 if hint is None else 2) and "Traceback" not in "\n".join(out)
        if hint is not None:
            assert out[1].startswith(hint)


def test_debug_env_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch):
    from pipeline.datasets.psg import DatasetError

    (tmp_path / "p.yaml").write_text("data: {split: ovr}\n")
    monkeypatch.setenv("SPADE_DEBUG", "1")
    with pytest.raises(DatasetError):
        stage_main("demo", ("data",), _raiser(DatasetError("bad", "1")), ["-p", str(tmp_path / "p.yaml")])
    monkeypatch.setenv("SPADE_DEBUG", "0")
    with pytest.raises(SystemExit):
        stage_main("demo", ("data",), _raiser(DatasetError("bad", "1")), ["-p", str(tmp_path / "p.yaml")])
    for bug in (RuntimeError("a bug"), KeyError("k"), TypeError("t"), ZeroDivisionError()):
        with pytest.raises(type(bug)):
            stage_main("demo", ("data",), _raiser(bug), ["-p", str(tmp_path / "p.yaml")])
    monkeypatch.delenv("SPADE_DEBUG")
    with pytest.raises(DatasetError):  # python -m stages.<name> --debug
        stage_main("demo", ("data",), _raiser(DatasetError("bad", "1")), ["-p", str(tmp_path / "p.yaml"), "--debug"])
    assert os.environ.pop("SPADE_DEBUG") == "1"


def test_exit_codes_are_distinct_per_class_and_documented():
    import pipeline.runner as runner

    codes = {code for _, _, code in runner.EXIT_CODES}
    assert codes == {1, 2, 3, 4, 5}
    for module, name, code in runner.EXIT_CODES:
        assert f"{code}  " in runner.__doc__ and name in runner.__doc__, (module, name)


def test_error_message_formats_oserrors_and_multiline_messages():
    from pipeline.runner import error_message

    assert error_message(OSError(30, "Read-only file system", "out/x")) == "out/x: Read-only file system"
    assert error_message(KeyError("no image 5")) == "no image 5"
    assert error_message(ValueError("head:\n  a\n\n  b\n")) == "head: a; b"
    assert error_message(ValueError("")) == "ValueError"
