"""What the user sees when a stage fails for a reason they can fix: one ``error:`` line (maybe a ``hint:``), the
exit status of the error class, no traceback unless ``--debug`` / ``SPADE_DEBUG=1`` (both from ``spade <stage>``
and from ``python -m stages.<name>``, which ``dvc repro`` runs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.datasets.synthetic import generate_dataset
from pipeline.io import OutputNotWritableError
from pipeline.params import default_params_dict
from stages.cli import app

REPO = Path(__file__).resolve().parents[2]
TINY = {"num_train": 4, "num_test": 2, "image_size": 64, "min_objects": 2, "max_objects": 3}


@pytest.fixture(scope="module")
def psg_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("psg") / "coco"
    generate_dataset(root, seed=1, progress=False, **TINY)
    return root


@pytest.fixture
def bad_workspace(psg_source, tmp_path, monkeypatch) -> tuple[Path, str]:
    """A workspace whose psg.json has one relation with subject == object; returns (workdir, image id)."""
    monkeypatch.delenv("SPADE_DEBUG", raising=False)
    shutil.copytree(psg_source, tmp_path / "coco")
    psg = json.loads((tmp_path / "coco" / "psg.json").read_text())
    psg["data"][1]["relations"].append([0, 0, 0])
    (tmp_path / "coco" / "psg.json").write_text(json.dumps(psg))
    raw = default_params_dict()
    raw["data"].update(source="psg", psg_json="coco/psg.json", image_root="coco")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path, str(psg["data"][1]["image_id"])


def _module(workdir: Path, name: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    full.pop("SPADE_DEBUG", None) if "SPADE_DEBUG" not in env else None
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=workdir, env=full, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_python_m_stage_prints_one_line_and_exit_3_for_a_bad_record(bad_workspace):
    workdir, image_id = bad_workspace
    proc = _module(workdir, "prepare")
    assert proc.returncode == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "validate:" not in ln]  # less tqdm
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[1] == "hint: fix the record, or set data.on_error: skip to drop bad records (listed in report.json)"
    assert re.fullmatch(rf"error: image {image_id}: relations\[\d+\] = \[0, 0, 0\]: subject and object are the "
                        "same segment", lines[0]), lines  # fmt: skip
    assert not (workdir / "data" / "prepared").exists()
    debug = _module(workdir, "prepare", SPADE_DEBUG="1")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "DatasetError: image" in debug.stderr


def test_spade_stage_command_exit_codes_and_debug_flag(bad_workspace, monkeypatch):
    workdir, image_id = bad_workspace
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 3 and f"error: image {image_id}: " in result.output
    assert "Traceback" not in result.output
    monkeypatch.setenv("SPADE_DEBUG", "0")  # restored after the test: --debug sets it for the workers too
    result = runner.invoke(app, ["--debug", "prepare"])
    assert type(result.exception).__name__ == "DatasetError" and os.environ["SPADE_DEBUG"] == "1"


def test_unwritable_output_fails_before_any_work(tmp_path, monkeypatch):
    """`calibrate` used to train every step and only then fail to write: now it stops at once (exit 5), before
    it even looks for its inputs (there are none here)."""
    monkeypatch.delenv("SPADE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params_dict(), sort_keys=False))
    (tmp_path / "artifacts").write_text("a file where the outputs' folder should be")
    result = CliRunner().invoke(app, ["calibrate"])
    assert result.exit_code == 5, result.output
    assert result.output.splitlines()[0] == (
        "error: artifacts/calibrate: cannot be created, artifacts is not a folder"
    )
    assert result.output.splitlines()[1].startswith("hint: ")
    monkeypatch.setenv("SPADE_DEBUG", "1")
    result = CliRunner().invoke(app, ["calibrate"])
    assert isinstance(result.exception, OutputNotWritableError)


def test_invalid_params_from_python_m_stage_is_one_line_exit_2(tmp_path):
    raw = default_params_dict()
    raw["model"]["image_size"] = 100
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = _module(tmp_path, "models")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: invalid parameters: model.image_size: must be a multiple of the VAE downsampling "
        "factor 8 (got 100)"
    ]
