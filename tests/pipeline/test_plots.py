"""``spade plots``: the DVC plots as PNG files that need no network."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.plots import read_curve, write_plots
from stages.cli import app


def _write_curves(root):
    (root / "artifacts" / "evaluate").mkdir(parents=True)
    (root / "artifacts" / "calibrate_curve.csv").write_text("step,loss\n1,0.004\n2,0.003\n3,0.0028\n")
    (root / "artifacts" / "train_curve.csv").write_text(
        "step,epoch,lr,loss,loss_rel,loss_rqc,loss_mask\n1,0,0.001,60,2.3,4.4,55\n2,0,0.001,40,2.0,3.0,35\n")


def test_write_plots_draws_each_curve_and_copies_the_recall_chart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_curves(tmp_path)
    Image.new("RGB", (4, 3)).save(tmp_path / "artifacts" / "evaluate" / "per_predicate_recall.png")
    written = write_plots(tmp_path / "plots")
    assert [p.name for p in written] == ["calibrate_loss.png", "train_loss.png", "per_predicate_recall.png"]
    for p in written[:2]:
        with Image.open(p) as im:
            assert im.size == (700, 400) and len(set(im.convert("L").getdata())) > 2  # something is drawn
    assert read_curve(tmp_path / "artifacts" / "train_curve.csv")["loss_rqc"] == [4.4, 3.0]


def test_plots_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPADE_DEBUG", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["plots"])
    assert result.exit_code == 1 and "error: no curve to plot" in result.output and "Traceback" not in result.output
    _write_curves(tmp_path)
    (tmp_path / "artifacts" / "train_curve.csv").write_text("step,loss\n1,abc\n")
    result = runner.invoke(app, ["plots", "--out", "out"])
    assert result.exit_code == 1 and "artifacts/train_curve.csv: a value is not a number" in result.output
    with pytest.raises(ValueError, match="expected a CSV with a 'step' column"):
        (tmp_path / "empty.csv").write_text("")
        read_curve(tmp_path / "empty.csv")
