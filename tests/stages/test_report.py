"""``spade report``: Tables 1 and 4 from metrics.parquet, ``dvc exp show --json`` parsing, ablation table."""

from __future__ import annotations

import json

import pytest

from pipeline import reporting as report
from pipeline.reporting import make_report, parse_dvc_exp_show, run_report
from pipeline.tables import METRICS_SCHEMA, write_table


def _params(split: str, lr: float, epochs: int) -> dict:
    return {"params.yaml": {"data": {"data": {"split": split}, "train": {"lr": lr, "epochs": epochs}}}}


def _metrics(r50: float, mr50: float) -> dict:
    return {"artifacts/metrics.json": {"data": {"closed": {"R@50": r50, "mR@50": mr50, "num_images": 6}}}}


def _state(rev: str, name: str | None, params: dict, metrics: dict) -> dict:
    data = {"rev": rev, "timestamp": "2026-01-01T10:00:00", "params": params, "metrics": metrics,
            "deps": {"run.py": {"hash": "e99a", "size": 194, "nfiles": None}}, "outs": {}, "meta": {}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}


# shaped like DVC 3.67 `dvc exp show --json` captured on a scratch repo (deps trimmed): workspace, the HEAD
# commit with two experiments, a queued experiment (no data) and one whose metrics file is missing
SAMPLE = [
    {**_state("workspace", None, _params("ovr", 0.01, 2), _metrics(0.21, 0.105)), "name": None},
    {
        **_state("320a735b3413", "master", _params("closed", 0.001, 2), _metrics(0.201, 0.1005)),
        "experiments": [
            {"revs": [_state("f869a335", "lr", _params("ovr", 0.01, 2), _metrics(0.21, 0.105))],
             "executor": None, "name": "lr"},
            {"revs": [_state("86bf8f81", "ep4", _params("closed", 0.001, 4), _metrics(0.401, 0.2012))],
             "executor": None, "name": "ep4"},
            {"revs": [{"rev": "aaaa", "name": None, "data": None, "error": None, "experiments": None}],
             "executor": {"state": "queued", "name": None, "local": None}, "name": "queued-exp"},
            {"revs": [_state("bbbb1111", "broken", _params("closed", 0.1, 2), {"artifacts/metrics.json": {
                "error": {"type": "FileNotFoundError", "msg": "No such file: 'artifacts/metrics.json'"}}})],
             "executor": None, "name": "broken"},
        ],
    },
]


@pytest.fixture
def metrics_parquet(tmp_path):
    values = {("closed", "R"): [0.123, 0.2345, 0.3], ("closed", "mR"): [0.05, 0.0999, 0.15],
              ("ovr", "R"): [0.01, 0.02, 0.03], ("ovr", "mR"): [0.011, 0.022, 0.033],
              ("chance_closed", "R"): [0.001, 0.002, 0.004], ("chance_closed", "mR"): [0.0, 0.0, 0.001]}
    rows = [{"setting": s, "metric": m, "k": k, "value": v, "num_images": 6}
            for (s, m), vs in values.items() for k, v in zip((20, 50, 100), vs)]
    rows += [{"setting": s, "metric": m, "k": k, "value": v, "num_images": n}
             for s, n, r, mr in (("spatial_dr", 4, 0.4567, 0.25), ("spatial_ndr", 5, 0.5, float("nan")))
             for k in (20, 50, 100) for m, v in (("R", r + k / 1000), ("mR", mr))]
    path = tmp_path / "metrics.parquet"
    write_table({f.name: [r[f.name] for r in rows] for f in METRICS_SCHEMA}, METRICS_SCHEMA, path)
    return path


def test_tables_1_and_4(metrics_parquet):
    text = make_report(metrics_parquet, None)
    assert "| Setting | R@20 | R@50 | R@100 | mR@20 | mR@50 | mR@100 | images |" in text
    assert "| Closed | 12.3 | 23.4 | 30.0 | 5.0 | 10.0 | 15.0 | 6 |" in text
    assert "| OvR | 1.0 | 2.0 | 3.0 | 1.1 | 2.2 | 3.3 | 6 |" in text
    assert "| Chance (Closed) | 0.1 | 0.2 | 0.4 | 0.0 | 0.0 | 0.1 | 6 |" in text
    assert "OvD+R" not in text  # no ovdr rows written
    assert "| Pairs | R@50 | mR@50 | images |" in text
    assert "| DR | 50.7 | 25.0 | 4 |" in text  # 0.4567 + 0.05
    assert "| NDR | 55.0 | – | 5 |" in text  # NaN shown as a dash
    assert "Ablation" not in text


def test_missing_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate"):
        make_report(tmp_path / "nope.parquet", None)


def test_parse_dvc_exp_show():
    runs = parse_dvc_exp_show(json.dumps(SAMPLE))
    assert [r["name"] for r in runs] == ["workspace", "master", "lr", "ep4", "broken"]  # queued left out
    by = {r["name"]: r for r in runs}
    assert by["master"]["kind"] == "baseline" and by["lr"]["kind"] == "experiment"
    assert by["lr"]["baseline"] == "master"
    assert by["ep4"]["params"] == {"data.split": "closed", "train.lr": 0.001, "train.epochs": 4}
    assert by["ep4"]["changed"] == {"train.epochs": 4}
    assert by["lr"]["changed"] == {"data.split": "ovr", "train.lr": 0.01}
    assert by["master"]["changed"] == {}
    assert by["ep4"]["metrics"] == {"closed.R@50": 0.401, "closed.mR@50": 0.2012, "closed.num_images": 6}
    assert by["broken"]["metrics"] == {} and "No such file" in by["broken"]["error"]
    assert by["workspace"]["changed"] == {"data.split": "ovr", "train.lr": 0.01}
    with pytest.raises(ValueError, match="JSON"):
        parse_dvc_exp_show("not json")


def test_ablation_table(metrics_parquet):
    text = make_report(metrics_parquet, parse_dvc_exp_show(json.dumps(SAMPLE)))
    assert "## Ablation" in text
    assert "| experiment | data.split | train.epochs | train.lr | closed R@50 | closed mR@50 |" in text
    assert "| ep4 | closed | 4 | 0.001 | 40.1 | 20.1 |" in text
    assert "| lr | ovr | 2 | 0.01 | 21.0 | 10.5 |" in text
    assert "| workspace |" not in text  # identical to `lr`
    assert "broken" not in text  # no metrics
    single = parse_dvc_exp_show(json.dumps([{**SAMPLE[1], "experiments": None}]))
    assert "Ablation" not in make_report(metrics_parquet, single)  # one run: no ablation table


def test_run_report(metrics_parquet, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "dvc_exp_show_json", lambda timeout=300.0: (json.dumps(SAMPLE), None))
    out = tmp_path / "out" / "report.md"
    text = run_report(metrics_parquet, out=out)
    assert out.read_text() == text and "## Ablation" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.md"]  # no temporary file left
    monkeypatch.setattr(report, "dvc_exp_show_json", lambda timeout=300.0: (None, "DVC is not installed"))
    text = run_report(metrics_parquet)
    assert "Ablation (" not in text and "_No ablation table: DVC is not installed._" in text
    assert "No ablation" not in run_report(metrics_parquet, with_experiments=False)


def test_vg_protocol_gives_tables_2_and_3(tmp_path):
    values = {("closed", "R"): 0.2, ("closed", "mR"): 0.1, ("ovr", "R"): 0.05, ("ovd", "R"): 0.03,
              ("chance_closed", "R"): 0.01, ("chance_closed", "mR"): 0.004, ("chance_ovr", "R"): 0.002}
    rows = [{"setting": s, "metric": m, "k": k, "value": v + k / 10000, "num_images": 7}
            for (s, m), v in values.items() for k in (20, 50, 100)]
    path = tmp_path / "metrics.parquet"
    columns = {f.name: [r[f.name] for r in rows] for f in METRICS_SCHEMA}
    write_table(columns, METRICS_SCHEMA.with_metadata({"protocol": "vg"}), path)
    text = make_report(path, None)
    assert "(VG protocol)" in text and "Table 1" not in text
    assert "| Closed | 20.2 | 20.5 | 21.0 | 10.2 | 10.5 | 11.0 | 7 |" in text
    assert "| Chance (Closed) | 1.2 | 1.5 | 2.0 | 0.6 | 0.9 | 1.4 | 7 |" in text
    assert "| Recall | R@20 | R@50 | R@100 | images |" in text
    assert "| Novel relation (OvR) | 5.2 | 5.5 | 6.0 | 7 |" in text
    assert "| Novel object (OvD) | 3.2 | 3.5 | 4.0 | 7 |" in text
    write_table(columns, METRICS_SCHEMA, path)  # no protocol key: an older file, PSG tables
    assert "Table 1" in make_report(path, None)
