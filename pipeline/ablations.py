"""The paper's ablations (its Tables 4-7) as DVC experiments over seeds: ``spade ablate``.

Every row of :data:`ROWS` is a set of parameter overrides on ``params.yaml``; each (row, seed) pair is one
``dvc exp run --temp`` with the overrides plus the seed keys (:data:`SEED_KEYS`: the seed varies the PSG model's
initialisation and data order and the calibration's LoRA / adapter initialisation and data order, never the
dataset or the shipped pretrained models). DVC's run-cache makes the rows share what they have in common (the
same ``prepare`` / ``models`` / ``invert`` for all, the same calibration for the rows that differ after it, the
same trained model for Table 7, whose rows differ only in ``evaluate``).

Resumable: each finished run is written at once to ``<runs_dir>/<key>.json``; its key digests the overrides
(seed included) and every file a stage depends on (:func:`code_digest`). A later ``spade ablate`` reuses every
run whose key still matches, so an interrupted suite continues where it stopped (also in a later session), and a
change to the pipeline's code or ``params.yaml`` reruns what it may have changed. :func:`summarise` turns the
runs into ``reports/ablations.json`` (per row: the overrides, ``n``, and per metric the per-seed values, mean and
sample standard deviation) and :func:`ablation_markdown` into ``reports/ablations.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.io import atomic_write_json, atomic_write_text

SEED_KEYS = ("train.seed", "calibrate.seed")
# metric name -> its path in artifacts/metrics.json
METRICS: dict[str, tuple[str, ...]] = {
    "R@20": ("closed", "R@20"), "mR@20": ("closed", "mR@20"),
    "R@50": ("closed", "R@50"), "mR@50": ("closed", "mR@50"),
    "R@100": ("closed", "R@100"), "mR@100": ("closed", "mR@100"),
    "DR R@50": ("spatial_dr", "R@50"), "DR mR@50": ("spatial_dr", "mR@50"),
    "NDR R@50": ("spatial_ndr", "R@50"), "NDR mR@50": ("spatial_ndr", "mR@50"),
    "chance R@50": ("chance", "closed", "R@50"),
}  # fmt: skip
# the DVC files whose stages' dependencies (with params.yaml) make a run's code identity
DVC_FILES = ("dvc.yaml", "teacher/dvc.yaml")


@dataclass(frozen=True)
class AblationRow:
    """One row of a paper table: ``key`` (file-name safe, unique), the label, the overrides."""

    table: str
    key: str
    row: str
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


ROWS: tuple[AblationRow, ...] = (
    AblationRow("4", "t4-vlm-only", "VLM-only (frozen dense CLIP features)", {"model.backbone": "clip"},
                "the same PSG model on the frozen CLIP map instead of the calibrated UNet"),
    AblationRow("4", "t4-spade", "SPADE (calibrated UNet)"),
    AblationRow("5", "t5-no-calibration", "w/o calibration (pretrained UNet)", {"calibrate.mode": "none"},
                "the teacher UNet conditioned on the empty prompt"),
    AblationRow("5", "t5-no-inversion", "w/o inversion (random noise)", {"invert.noise": "random"}),
    AblationRow("5", "t5-full-finetune", "full fine-tuning instead of LoRA", {"calibrate.mode": "full"}),
    AblationRow("5", "t5-spade", "LoRA calibration (SPADE)"),
    AblationRow("6", "t6-baseline", "baseline (no RGT, no L_rqc)", {"model.rgt.num_blocks": 0, "train.use_rqc": False}),
    AblationRow("6", "t6-long-range", "+ LCNL + LCNNL (long-range context)",
                {"model.rgt.use_lcl": False, "train.use_rqc": False}),
    AblationRow("6", "t6-rgt", "+ LCL (full RGT)", {"train.use_rqc": False}),
    AblationRow("6", "t6-spade", "+ L_rqc (SPADE)"),
    AblationRow("7", "t7-diffusion", "diffusion logits only", {"evaluate.use_pooled_logits": False}),
    AblationRow("7", "t7-pooled", "pooled CLIP logits only", {"evaluate.use_diffusion_logits": False}),
    AblationRow("7", "t7-spade", "both, fused (SPADE)"),
)  # fmt: skip

# The paper's numbers per row key, for orientation only: transcribed from secondary notes on the paper (the PDF
# is not available to this project, so they are unverified), on real PSG with SD-1.5-scale models. Table 5 of the
# paper reports open-vocabulary R@50 (OvR / OvD+R); our Table 5 analogue reports the closed set.
PAPER_SOURCE = "transcribed from secondary notes on the paper, not checked against the PDF; real PSG, SD-1.5 scale"
PAPER: dict[str, str] = {
    "t4-vlm-only": "OpenPSG (VLM baseline) R@50 DR 37.1 / NDR 43.7",
    "t4-spade": "R@50 DR 42.3 / NDR 46.5",
    "t5-no-calibration": "OvR / OvD+R R@50 15.3 / 10.1",
    "t5-no-inversion": "OvR / OvD+R R@50 21.0 / 15.9",
    "t5-full-finetune": "OvR / OvD+R R@50 18.8 / 12.7",
    "t5-spade": "OvR / OvD+R R@50 26.7 / 22.7",
    "t6-baseline": "R@50 / mR@50 30.5 / 26.3",
    "t6-long-range": "R@50 / mR@50 37.1 / 34.4 (+LCNL alone: 35.6 / 32.2)",
    "t6-rgt": "R@50 / mR@50 40.3 / 35.6",
    "t6-spade": "R@50 / mR@50 45.1 / 41.2",
    "t7-spade": "OvR R@50 26.7 (single branches 12.5 and 21.4; which branch is which is not in our notes)",
}

TABLE_TITLES = {
    "4": "Table 4 analogue: spatial analysis (distant / non-distant pairs), VLM-only vs SPADE",
    "5": "Table 5 analogue: inversion-guided calibration",
    "6": "Table 6 analogue: Relation Graph Transformer and relation-query loss",
    "7": "Table 7 analogue: classification sources at inference (one trained model per seed)",
}
TABLE_METRICS = {
    "4": ("DR R@50", "DR mR@50", "NDR R@50", "NDR mR@50", "R@50"),
    "5": ("R@20", "R@50", "mR@50", "R@100", "mR@100"),
    "6": ("R@20", "R@50", "mR@50", "R@100", "mR@100"),
    "7": ("R@20", "R@50", "mR@50", "R@100", "mR@100"),
}


def select_rows(tables: Iterable[str] | None = None, rows: Sequence[AblationRow] = ROWS) -> list[AblationRow]:
    """The rows of the given tables (all when None); an unknown table is an error naming the known ones."""
    if tables is None:
        return list(rows)
    wanted = [str(t) for t in tables]
    known = sorted({r.table for r in rows})
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ValueError(f"ablate: unknown table(s) {unknown}; the tables are {known}")
    return [r for r in rows if r.table in wanted]


def run_overrides(row: AblationRow, seed: int) -> dict[str, Any]:
    """The ``-S`` overrides of one run: the row's parameters and the seed keys."""
    return {**row.params, **dict.fromkeys(SEED_KEYS, int(seed))}


def param_text(value: Any) -> str:
    """A value as ``dvc exp run -S key=value`` reads it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def stage_dependencies(repo: Path, dvc_files: Sequence[str] = DVC_FILES) -> list[str]:
    """Every dependency path of every stage in ``dvc_files``, plus those files and ``params.yaml``."""
    import yaml

    found = {"params.yaml", *dvc_files}
    params_file = Path(repo) / "params.yaml"
    params = (yaml.safe_load(params_file.read_text()) or {}) if params_file.is_file() else {}
    for name in dvc_files:
        path = Path(repo) / name
        if path.is_file():
            for stage in (yaml.safe_load(path.read_text()) or {}).get("stages", {}).values():
                deps = (interpolate(d, params) for d in stage.get("deps", []) if isinstance(d, str))
                found.update(str(Path(name).parent / d) for d in deps if not Path(d).is_absolute())
    return sorted(found)


def interpolate(text: str, params: dict[str, Any]) -> str:
    """``text`` with each ``${a.b}`` replaced by that value of ``params`` (as DVC templates a ``dvc.yaml`` entry,
    e.g. the ``models`` stage's ``${model.sd_path}``)."""

    def value(match: re.Match) -> str:
        node: Any = params
        for part in match.group(1).strip().split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def code_digest(repo: Path) -> str:
    """sha256 over the git-visible files (tracked and untracked, not ignored) that a stage depends on
    (:func:`stage_dependencies`): what a run's result depends on besides its overrides."""
    paths = [p for p in stage_dependencies(repo) if (Path(repo) / p).exists()]
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *paths], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    h = hashlib.sha256()
    for name in sorted(n for n in listed if n):
        path = Path(repo) / name.decode()
        if path.is_file():
            h.update(name + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def run_key(overrides: dict[str, Any], code: str) -> str:
    """Key of one run: its overrides and the code digest (rows with the same overrides share a run)."""
    text = json.dumps({"overrides": overrides, "code": code}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_file(runs_dir: Path, key: str) -> Path:
    return Path(runs_dir) / f"{key}.json"


def finished_run(runs_dir: Path, key: str) -> dict | None:
    """The stored result of the run ``key`` (None: not finished, or unreadable)."""
    path = run_file(runs_dir, key)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return stored if stored.get("key") == key and isinstance(stored.get("metrics"), dict) else None


def pick_metrics(metrics_json: dict) -> dict[str, float]:
    """The :data:`METRICS` of one ``artifacts/metrics.json`` (absent ones left out)."""
    out = {}
    for name, where in METRICS.items():
        value: Any = metrics_json
        for key in where:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class ExperimentError(RuntimeError):
    """A ``dvc exp run`` that failed; the message names the run and its log file."""


def dvc_command() -> list[str]:
    """``dvc`` as this interpreter's environment has it (works from a shell without the venv on PATH)."""
    import shutil
    import sys

    local = Path(sys.executable).with_name("dvc")
    return [str(local)] if local.is_file() else [shutil.which("dvc") or "dvc"]


def experiment_ref(repo: Path, name: str) -> str | None:
    """The git ref of the DVC experiment named ``name`` (``refs/exps/.../name``), newest first."""
    out = subprocess.run(["git", "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps"],
                         cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    found = [r for r in out if r.rsplit("/", 1)[-1] == name]
    return found[0] if found else None


def read_experiment_metrics(repo: Path, ref: str, metrics_file: str) -> dict:
    """``metrics_file`` as committed in the experiment ``ref``."""
    done = subprocess.run(["git", "show", f"{ref}:{metrics_file}"], cwd=repo, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise ExperimentError(f"ablate: experiment {ref} has no {metrics_file}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def dvc_exp_run(repo: Path, name: str, overrides: dict[str, Any], log: Path, threads: int | None = None,
                metrics_file: str = "artifacts/metrics.json") -> dict:
    """``dvc exp run --temp -n name -S k=v ...`` in ``repo`` (output to ``log``); returns the experiment's
    ``metrics_file``. ``threads``: torch / OpenMP threads of the stage processes (``OMP_NUM_THREADS``)."""
    cmd = [*dvc_command(), "exp", "run", "--temp", "-n", name]
    for k, v in overrides.items():
        cmd += ["-S", f"{k}={param_text(v)}"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    env["PATH"] = f"{Path(dvc_command()[0]).parent}{os.pathsep}{env.get('PATH', '')}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        done = subprocess.run(cmd, cwd=repo, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    ref = experiment_ref(repo, name) if done.returncode == 0 else None
    if ref is None:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
        reason = next((x for x in reversed(lines) if x.startswith("ERROR")), lines[-1] if lines else "")
        raise ExperimentError(f"ablate: experiment {name} failed (exit {done.returncode}): {reason} (log: {log})")
    return read_experiment_metrics(repo, ref, metrics_file)


RunFn = Callable[[str, dict[str, Any], Path], dict]
# stage levels, upstream first, and the override prefixes each adds (a run's level key: its overrides up to there)
LEVELS = (("prepare", ("data.", "prepare.")), ("invert", ("invert.",)), ("calibrate", ("calibrate.",)),
          ("train", ("model.", "train.")))
# the stage that starts once a level's stages are done (their outputs are then in DVC's run-cache)
NEXT_STAGE = {"prepare": "invert", "invert": "calibrate", "calibrate": "train", "train": "evaluate"}


def levels_done_in_log(log: Path) -> int:
    """How many :data:`LEVELS` a run in flight has finished, read from its ``dvc exp run`` output."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    done = 0
    for name, _ in LEVELS:
        stage = NEXT_STAGE[name]
        if f"Running stage '{stage}'" not in text and f"Stage '{stage}' didn't change" not in text:
            break
        done += 1
    return done


def level_keys(overrides: dict[str, Any]) -> list[str]:
    """One key per stage level: runs with equal keys at a level share that stage's outputs (DVC run-cache)."""
    keys, prefixes = [], ()
    for _, adds in LEVELS:
        prefixes = (*prefixes, *adds)
        keys.append(json.dumps({k: v for k, v in sorted(overrides.items()) if k.startswith(prefixes)}))
    return keys


@dataclass
class PlannedRun:
    key: str
    overrides: dict[str, Any]
    rows: list[AblationRow]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.rows[0].key}-s{self.seed}-{self.key[:6]}"


@dataclass
class AblationSuite:
    """The runs of ``rows`` x ``seeds`` in ``repo``: results in ``runs_dir``, logs in ``log_dir``.

    Rows with the same overrides (e.g. SPADE in every table) share one run. ``jobs`` runs go at once (each
    stage process with ``threads`` torch threads); a run waits while another one in flight is computing a
    stage it would share but that no run has produced yet (so no stage is computed twice); a run in flight counts
    as having produced the stages its log shows it has passed.
    ``run(name, overrides, log) -> metrics.json dict`` executes one run (default :func:`dvc_exp_run`)."""

    repo: Path
    rows: list[AblationRow]
    seeds: list[int]
    runs_dir: Path
    log_dir: Path
    run: RunFn | None = None
    jobs: int = 1
    threads: int | None = None

    def plan(self) -> list[PlannedRun]:
        """The distinct runs, seed-major (every row's first seed before any second seed), in row order."""
        code = code_digest(self.repo)
        runs: dict[str, PlannedRun] = {}
        for seed in self.seeds:
            for row in self.rows:
                overrides = run_overrides(row, seed)
                key = run_key(overrides, code)
                runs.setdefault(key, PlannedRun(key, overrides, [], seed)).rows.append(row)
        return list(runs.values())

    def execute(self, echo: Callable[[str], None] = print) -> dict[str, dict]:
        """Run what is not finished; write each result as soon as it exists. Returns ``{key: result}``."""
        import threading

        plan = self.plan()
        results = {p.key: r for p in plan if (r := finished_run(self.runs_dir, p.key)) is not None}
        todo = [p for p in plan if p.key not in results]
        total = len(todo)
        echo(f"ablate: {len(self.rows)} rows x {len(self.seeds)} seeds = {len(plan)} distinct runs, "
             f"{len(results)} finished, {len(todo)} to run ({self.jobs} at a time)")
        run = self.run or (lambda name, ov, log: dvc_exp_run(self.repo, name, ov, log, self.threads))
        done_levels = {k for p in plan if p.key in results for k in level_keys(p.overrides)}
        flying: dict[str, PlannedRun] = {}
        errors: list[BaseException] = []
        cond = threading.Condition()

        def ready(p: PlannedRun) -> bool:
            for q in flying.values():
                keys = level_keys(q.overrides)
                done_levels.update(keys[: levels_done_in_log(self.log_dir / f"{q.name}.log")])
            busy = {k for q in flying.values() for k in level_keys(q.overrides)}
            return all(k in done_levels or k not in busy for k in level_keys(p.overrides))

        def work(p: PlannedRun, number: int) -> None:
            start = time.time()
            try:
                metrics = run(p.name, p.overrides, self.log_dir / f"{p.name}.log")
                record = {"key": p.key, "experiment": p.name, "seed": p.seed, "overrides": p.overrides,
                          "rows": [r.key for r in p.rows], "seconds": round(time.time() - start, 1),
                          "metrics": pick_metrics(metrics)}
                atomic_write_json(run_file(self.runs_dir, p.key), record)
                m = record["metrics"]
                echo(f"ablate: [{number}/{total}] {p.name} done in {record['seconds']:.0f} s: R@50 "
                     f"{100 * m.get('R@50', math.nan):.1f}, mR@50 {100 * m.get('mR@50', math.nan):.1f}")
                with cond:
                    results[p.key] = record
                    done_levels.update(level_keys(p.overrides))
            except BaseException as err:  # reported once the other runs in flight have finished
                with cond:
                    errors.append(err)
            finally:
                with cond:
                    flying.pop(p.key, None)
                    cond.notify_all()

        threads: list[threading.Thread] = []
        number = 0
        with cond:
            while todo and not errors:
                nxt = next((p for p in todo if ready(p)), None) if len(flying) < self.jobs else None
                if nxt is None:
                    cond.wait(timeout=5.0)  # also re-read the logs of the runs in flight
                    continue
                todo.remove(nxt)
                number += 1
                flying[nxt.key] = nxt
                echo(f"ablate: [{number}/{total}] {nxt.name}: "
                     + " ".join(f"{k}={param_text(v)}" for k, v in nxt.overrides.items()))
                t = threading.Thread(target=work, args=(nxt, number), daemon=True)
                threads.append(t)
                t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarise(suite_rows: Sequence[AblationRow], plan: Sequence[PlannedRun], results: dict[str, dict],
              seeds: Sequence[int]) -> dict:
    """``{"seed_keys", "seeds", "rows": [{"table", "row", "key", "params", "note", "n", "seeds", "metrics":
    {name: {"per_seed", "mean", "std"}}}]}`` over the finished runs (a row with none has ``n = 0``)."""
    out = []
    for row in suite_rows:
        done = sorted((results[p.key] for p in plan if row in p.rows and p.key in results), key=lambda r: r["seed"])
        names = [m for m in METRICS if done and all(m in r["metrics"] for r in done)]
        metrics = {}
        for name in names:
            values = [r["metrics"][name] for r in done]
            mean, std = mean_std(values)
            metrics[name] = {"per_seed": values, "mean": mean, "std": std}
        out.append({"table": row.table, "row": row.row, "key": row.key, "params": dict(row.params),
                    "note": row.note, "n": len(done), "seeds": [r["seed"] for r in done],
                    "seconds": [r["seconds"] for r in done], "metrics": metrics})
    return {"seed_keys": list(SEED_KEYS), "seeds": list(seeds), "rows": out}


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def ablation_markdown(summary: dict, paper: dict[str, str] | None = None, paper_source: str = PAPER_SOURCE) -> str:
    """Markdown tables (mean ± std over seeds, in %) of :func:`summarise`'s output, one per paper table;
    ``paper`` maps a row key to the paper's numbers as text (shown under the table with ``paper_source``)."""
    parts = [f"Seeds {summary['seeds']} (varying {', '.join(summary['seed_keys'])}); values in %, mean ± sample "
             "std over the seeds; n = finished seeds."]
    for table, title in TABLE_TITLES.items():
        rows = [r for r in summary["rows"] if r["table"] == table]
        if not rows:
            continue
        names = TABLE_METRICS[table]
        header = ["row", "n", *names, "chance R@50", "overrides"]
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            over = ", ".join(f"`{k}={param_text(v)}`" for k, v in r["params"].items()) or "(default)"
            cells = [r["row"], str(r["n"]), *(_cell(r["metrics"].get(m)) for m in names),
                     _cell(r["metrics"].get("chance R@50")), over]
            lines.append("| " + " | ".join(cells) + " |")
        paper_rows = [(r["row"], (paper or {}).get(r["key"])) for r in rows if (paper or {}).get(r["key"])]
        if paper_rows:
            lines += ["", f"Paper ({paper_source}): " + "; ".join(f"{name}: {txt}" for name, txt in paper_rows)]
        parts += ["", *lines]
    return "\n".join(parts) + "\n"


def write_reports(summary: dict, json_path: Path, md_path: Path, paper: dict | None = None) -> None:
    atomic_write_json(json_path, summary)
    atomic_write_text(md_path, ablation_markdown(summary, paper))


def run_ablate(
    tables: Sequence[str] | None = None,
    seeds: int = 3,
    jobs: int = 1,
    threads: int | None = None,
    dry_run: bool = False,
    repo: Path = Path("."),
    run: RunFn | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """``spade ablate``: run (or continue) the suite, then write ``reports/ablations.{json,md}``.

    ``seeds``: seeds 0..seeds-1 (seed 0 = the default params); ``dry_run``: print the plan and write the
    reports from the runs finished so far, running nothing."""
    from pipeline import paths

    if seeds < 1 or jobs < 1:
        raise ValueError(f"ablate: --seeds and --jobs must be >= 1, got {seeds} and {jobs}")
    repo = Path(repo)
    rows = select_rows(tables)
    suite = AblationSuite(repo, rows, list(range(seeds)), repo / paths.ABLATION_RUNS, repo / paths.ABLATION_LOGS,
                          run=run, jobs=jobs, threads=threads)
    plan = suite.plan()
    if dry_run:
        for p in plan:
            state = "finished" if finished_run(suite.runs_dir, p.key) else "to run"
            echo(f"{p.name} [{state}] rows {', '.join(r.key for r in p.rows)}: "
                 + " ".join(f"{k}={param_text(v)}" for k, v in p.overrides.items()))
        results = {p.key: r for p in plan if (r := finished_run(suite.runs_dir, p.key)) is not None}
    else:
        results = suite.execute(echo)
    summary = summarise(rows, plan, results, suite.seeds)
    write_reports(summary, repo / paths.ABLATIONS_JSON, repo / paths.ABLATIONS_MD, PAPER)
    echo(f"ablate: {len(results)}/{len(plan)} runs finished -> {paths.ABLATIONS_JSON}, {paths.ABLATIONS_MD}")
    return summary
