"""Visual Genome end to end: ``dvc repro`` on the embedded VG-format data (``data.source: synthetic-vg``).

A project copy with the tiny params and ``data.source: synthetic-vg``, ``data.split: ovdr`` runs every stage
under DVC: ``prepare`` writes the synthetic scenes as a real VG-SGG triple and reads it back through the VG
reader, ``train`` fits the box model, ``evaluate`` scores it with the Scene-Graph-Benchmark / OvSGTR rules.
The numbers of this tiny run mean nothing (two epochs on 12 images); what is checked is that the VG path runs
under ``dvc repro`` and writes what it claims, with the paper's box head and with boxes from masks
(``model.box_source``).
"""

from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest

from .conftest import BIN, copy_project, dvc, dvc_test, sh, tiny_params_dict, write_params


@pytest.mark.slow
@dvc_test
@pytest.mark.parametrize("box_source", ["head", "mask"])
def test_dvc_repro_on_the_embedded_vg_data(tool_env, tmp_path, box_source):
    root = copy_project(tmp_path / "vg")
    write_params(root, tiny_params_dict(data={"source": "synthetic-vg", "split": "ovdr"},
                                        model={"box_source": box_source}))
    for cmd in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-qm", "project")):
        sh(root, tool_env, "git", *cmd)
    out = dvc(root, tool_env, "repro").stdout
    for stage in ("prepare", "models", "invert", "calibrate", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out, out[-3000:]

    report = json.loads((root / "data/prepared/report.json").read_text())
    assert report["annotation"] == "boxes" and report["source"] == "synthetic-vg"
    assert (root / "data/prepared/dataset/VG-SGG.h5").is_file()
    config = json.loads((root / "artifacts/train/config.json").read_text())
    assert config["model"]["architecture"]["task"] == "boxes"
    assert config["model"]["architecture"]["box_source"] == box_source

    metrics = json.loads((root / "artifacts/metrics.json").read_text())
    assert {"closed", "ovr", "ovd", "chance"} <= set(metrics), metrics
    assert "mR@50" in metrics["closed"] and "mR@50" not in metrics["ovr"]  # OvSGTR novel recalls: R only
    parquet = root / "artifacts/evaluate/metrics.parquet"
    assert pq.read_schema(parquet).metadata[b"protocol"] == b"vg"
    triplets = pq.read_table(root / "artifacts/evaluate/triplets.parquet").to_pylist()
    assert triplets and all(r["subject_rle"] == "" and len(r["subject_box"]) == 4 for r in triplets)
    assert list((root / "artifacts/evaluate/visualisations").glob("*.png"))

    text = subprocess.run([str(BIN / "python"), "-m", "stages.report"], cwd=root, env=tool_env, check=True,
                          capture_output=True, text=True).stdout
    assert "Table 2: VG-150" in text and "Table 3: VG-150 open vocabulary" in text
    assert "up to date" in dvc(root, tool_env, "status").stdout
