"""The ``spade report`` Markdown: tables shaped like the paper's Table 1 and Table 4 (PSG) or Tables 2 and 3
(VG), plus an ablation table.

* Table 1 (PSG protocol): one row per setting (Closed, OvR, OvD+R, and the chance baseline when it was
  written), columns R@K then mR@K for every K, values x100 with one decimal.
* Tables 2 and 3 (VG protocol, from ``metrics.parquet``'s ``protocol`` metadata): the closed set (R@K, mR@K, and
  chance), then OvSGTR's open-vocabulary recalls: joint, novel relation (OvR), novel object (OvD).
* Table 4: spatial predicates only, distant (DR) and non-distant (NDR) pairs, R@50 and mR@50.
* Ablation (when ``dvc exp show --json`` lists at least two runs with metrics): one row per run with the
  parameters that differ between runs and R@50 / mR@50 of each setting present in ``metrics.json``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import paths
from pipeline.io import atomic_write_text
from pipeline.tables import METRICS_SCHEMA, read_table

TABLE1 = {"closed": "Closed", "ovr": "OvR", "ovdr": "OvD+R"}
TABLE2 = {"closed": "Closed"}
TABLE3 = {"closed": "Joint (base + novel)", "ovr": "Novel relation (OvR)", "ovd": "Novel object (OvD)"}
TABLE4 = {"spatial_dr": "DR", "spatial_ndr": "NDR"}
METRICS_PARQUET = paths.EVALUATE / "metrics.parquet"
Metrics = dict[tuple[str, str, int], tuple[float, int]]  # (setting, metric, k) -> (value, num_images)


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:.1f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def load_metrics(path: Path) -> Metrics:
    """``metrics.parquet`` as ``{(setting, metric, k): (value, num_images)}``."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run the evaluate stage first (`dvc repro`)")
    table = read_table(Path(path), METRICS_SCHEMA).to_pylist()
    return {(r["setting"], r["metric"], r["k"]): (r["value"], r["num_images"]) for r in table}


def metrics_protocol(path: Path) -> str:
    """``psg`` or ``vg``: the evaluator of a ``metrics.parquet`` (files written before the key existed: psg)."""
    meta = pq.read_schema(path).metadata or {}
    return meta.get(b"protocol", b"psg").decode()


def _settings_table(metrics: Metrics, labels: dict[str, str], ks: list[int], first: str,
                    measures: tuple[str, ...] = ("R", "mR"), chance: bool = True) -> str | None:
    names = [(s, lab) for s, lab in labels.items() if any(key[0] == s for key in metrics)]
    names += [
        (f"chance_{s}", f"Chance ({lab})")
        for s, lab in labels.items()
        if chance and any(key[0] == f"chance_{s}" for key in metrics)
    ]
    if not names:
        return None
    header = [first] + [f"{m}@{k}" for m in measures for k in ks] + ["images"]
    rows = []
    for setting, label in names:
        cells = [_pct(metrics.get((setting, m, k), (None, 0))[0]) for m in measures for k in ks]
        images = max((n for key, (_, n) in metrics.items() if key[0] == setting), default=0)
        rows.append([label, *cells, str(images)])
    return _markdown(header, rows)


def ablation_table(exp_rows: list[dict[str, Any]], k: int = 50) -> str | None:
    """One row per run: name, the params that differ between runs, ``<setting> R@k`` / ``mR@k`` (x100)."""
    runs = [r for r in exp_rows if r.get("metrics")]
    # the workspace usually repeats the last experiment: drop it when another run is identical
    runs = [
        r
        for r in runs
        if r["kind"] != "workspace"
        or not any(o is not r and o["params"] == r["params"] and o["metrics"] == r["metrics"] for o in runs)
    ]
    if len(runs) < 2:
        return None
    keys = sorted({key for r in runs for key in r["params"]})
    differ = [key for key in keys if len({json.dumps(r["params"].get(key), sort_keys=True) for r in runs}) > 1]
    metric_keys = [
        f"{s}.{m}@{k}" for s in TABLE1 for m in ("R", "mR") if any(f"{s}.{m}@{k}" in r["metrics"] for r in runs)
    ]
    header = ["experiment", *differ, *[key.replace(".", " ") for key in metric_keys]]
    rows = []
    for r in runs:
        params = [
            json.dumps(r["params"][key])
            if isinstance(r["params"].get(key), (list, dict))
            else str(r["params"].get(key, "–"))
            for key in differ
        ]
        rows.append([r["name"], *params, *[_pct(r["metrics"].get(key)) for key in metric_keys]])
    return _markdown(header, rows)


def make_report(metrics_parquet: Path, exp_rows: list[dict[str, Any]] | None = None) -> str:
    """The Markdown report of one ``metrics.parquet`` (and the runs of :func:`parse_dvc_exp_show`)."""
    metrics = load_metrics(metrics_parquet)
    ks = sorted({key[2] for key in metrics})
    protocol = metrics_protocol(metrics_parquet)
    parts = [
        "# SPADE evaluation report",
        "",
        f"SGDet recall on the test set ({protocol.upper()} protocol), values x100, from `{metrics_parquet}`.",
    ]
    if protocol == "vg":
        table2 = _settings_table(metrics, TABLE2, ks, "Setting")
        if table2:
            parts += ["", "## Table 2: VG-150 scene graph detection (closed set)", "", table2]
        table3 = _settings_table(metrics, TABLE3, ks, "Recall", measures=("R",), chance=False)
        if table3 and any(key[0] in ("ovr", "ovd") for key in metrics):
            parts += ["", "## Table 3: VG-150 open vocabulary (OvSGTR protocol)", "", table3]
    else:
        table1 = _settings_table(metrics, TABLE1, ks, "Setting")
        if table1:
            parts += ["", "## Table 1: scene graph detection", "", table1]
    spatial_ks = [50] if any(key[2] == 50 and key[0] in TABLE4 for key in metrics) else ks
    table4 = _settings_table(metrics, TABLE4, spatial_ks, "Pairs")
    if table4:
        parts += ["", "## Table 4: spatial predicates, distant (DR) and non-distant (NDR) pairs", "", table4]
    ablation = ablation_table(exp_rows) if exp_rows else None
    if ablation:
        parts += ["", "## Ablation (`dvc exp show`)", "", ablation]
    return "\n".join(parts) + "\n"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _run_entry(state: dict, kind: str, name: str, baseline: str, metrics_file: str) -> dict[str, Any] | None:
    data = state.get("data")
    if not data:
        return None  # queued / not yet run
    params: dict[str, Any] = {}
    for file, result in (data.get("params") or {}).items():
        pre = "" if file == "params.yaml" else f"{file}:"
        params.update({pre + k: v for k, v in _flatten((result or {}).get("data") or {}).items()})
    result = (data.get("metrics") or {}).get(metrics_file) or {}
    error = result.get("error") or state.get("error")
    return {
        "name": name,
        "rev": state.get("rev"),
        "kind": kind,
        "baseline": baseline,
        "params": params,
        "metrics": _flatten(result.get("data") or {}),
        "error": (error.get("msg") or str(error)) if isinstance(error, dict) else error,
    }


def parse_dvc_exp_show(json_text: str, metrics_file: str = str(paths.EVALUATE_METRICS)) -> list[dict[str, Any]]:
    """Runs listed by DVC 3's ``dvc exp show --json``.

    The JSON is a list of commits (the first is ``"workspace"``), each ``{"rev", "name", "data": {"params":
    {file: {"data": {...}}}, "metrics": {file: {"data": {...}} | {"error": {...}}}, ...}, "error",
    "experiments": [{"name", "executor", "revs": [state, ...]}] | null}``.

    Returns:
        Per run ``{"name", "rev", "kind" ("workspace" | "baseline" | "experiment"), "baseline" (name of its
        commit), "params" (flat ``"train.lr"``; other params files as ``"file:key"``), "changed" (params that
        differ from its baseline commit, workspace: from the first commit), "metrics" (flat ``"closed.R@50"``
        from ``metrics_file``), "error"}``. Queued runs (no data yet) are left out.
    """
    try:
        commits = json.loads(json_text)
    except json.JSONDecodeError as err:
        raise ValueError(f"dvc exp show output is not JSON: {err}") from None
    if not isinstance(commits, list):
        raise ValueError("dvc exp show --json output must be a list of commits")
    runs: list[dict[str, Any]] = []
    workspace = None
    for commit in commits:
        rev = str(commit.get("rev"))
        if rev == "workspace":
            workspace = _run_entry(commit, "workspace", "workspace", "", metrics_file)
            continue
        base_name = commit.get("name") or rev[:7]
        base = _run_entry(commit, "baseline", base_name, base_name, metrics_file)
        if base is not None:
            base["changed"] = {}
            runs.append(base)
        for exp in commit.get("experiments") or []:
            revs = exp.get("revs") or []
            if not revs:
                continue
            state = revs[0]  # newest commit of the experiment
            name = exp.get("name") or state.get("name") or str(state.get("rev"))[:7]
            run = _run_entry(state, "experiment", name, base_name, metrics_file)
            if run is not None:
                run["changed"] = _changed(run["params"], base["params"] if base else {})
                runs.append(run)
    if workspace is not None:
        first = next((r for r in runs if r["kind"] == "baseline"), None)
        workspace["changed"] = _changed(workspace["params"], first["params"] if first else {})
        runs.insert(0, workspace)
    return runs


def _changed(params: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(set(params) | set(reference))
    return {k: params.get(k) for k in keys if params.get(k) != reference.get(k)}


def dvc_exp_show_json(timeout: float = 300.0) -> tuple[str | None, str | None]:
    """Run ``dvc exp show --json`` in the working directory: ``(json_text, None)`` or ``(None, reason)``."""
    if importlib.util.find_spec("dvc") is not None:
        cmd = [sys.executable, "-m", "dvc"]
    elif shutil.which("dvc"):
        cmd = ["dvc"]
    else:
        return None, "DVC is not installed"
    try:
        done = subprocess.run(
            [*cmd, "exp", "show", "--json"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"`dvc exp show` failed: {err}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return None, f"`dvc exp show` failed: {lines[-1] if lines else f'exit code {done.returncode}'}"
    return done.stdout, None


def run_report(metrics_path: Path = METRICS_PARQUET, out: Path | None = None, with_experiments: bool = True) -> str:
    """Build the report from ``metrics_path`` (and ``dvc exp show`` when ``with_experiments``); write it to
    ``out`` (atomically) when given; return the Markdown."""
    exp_rows, note = None, None
    if with_experiments:
        text, note = dvc_exp_show_json()
        if text is not None:
            try:
                exp_rows = parse_dvc_exp_show(text)
            except ValueError as err:
                note = str(err)
    report = make_report(Path(metrics_path), exp_rows)
    if note:
        report += f"\n_No ablation table: {note}._\n"
    if out is not None:
        atomic_write_text(out, report)
    return report
