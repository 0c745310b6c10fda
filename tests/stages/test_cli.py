"""``spade``: stage commands exit 2 on invalid params, user commands turn expected errors into ``error: ...``."""

from __future__ import annotations

from typer.testing import CliRunner

from stages.cli import app


def test_spade_stage_command_and_user_command_exit_codes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("data: {split: nope}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "--params", "bad.yaml"])
    assert result.exit_code == 2 and "data.split" in result.output
    result = runner.invoke(app, ["params", "check", "bad.yaml"])
    assert result.exit_code == 1 and "data.split" in result.output
    result = runner.invoke(app, ["report", "--no-experiments"])
    assert result.exit_code == 1 and "error: artifacts/evaluate/metrics.parquet not found" in result.output


def test_predict_device_and_dtype_are_checked_in_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPADE_DEBUG", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "x.png", "--device", "gpu"])
    assert result.exit_code == 1 and "error: --device 'gpu'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["predict", "x.png", "--dtype", "float64"])
    assert result.exit_code == 1 and "--dtype 'float64'" in result.output
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["predict", "x.png", "--device", "cuda"])
        assert result.exit_code == 1 and "no CUDA device is available" in result.output
