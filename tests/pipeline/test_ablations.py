"""`spade ablate`: the plan (shared runs), resume, scheduling, the summary and a real `dvc exp run --temp`."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import ablations
from pipeline.ablations import (
    ROWS,
    AblationRow,
    AblationSuite,
    ablation_markdown,
    dvc_exp_run,
    level_keys,
    mean_std,
    pick_metrics,
    run_ablate,
    select_rows,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]


def _metrics(r50: float) -> dict:
    return {"closed": {"R@20": r50 / 2, "R@50": r50, "mR@50": r50 / 3, "R@100": r50, "mR@100": r50 / 2},
            "spatial_dr": {"R@50": r50, "mR@50": r50}, "spatial_ndr": {"R@50": r50, "mR@50": r50},
            "chance": {"closed": {"R@50": 0.01}}}


def _git_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    (path / "params.yaml").write_text("train:\n  seed: 0\n")
    return path


class FakeRuns:
    """Stands in for `dvc exp run`: R@50 = 0.1 * seed + 0.01 * (number of overrides), records every call."""

    def __init__(self, fail_on: str | None = None, delay: float = 0.0):
        self.calls: list[tuple[str, dict]] = []
        self.fail_on, self.delay = fail_on, delay
        self.lock = threading.Lock()
        self.active, self.max_active = 0, 0

    def __call__(self, name: str, overrides: dict, log: Path) -> dict:
        with self.lock:
            self.calls.append((name, overrides))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if self.fail_on and name.startswith(self.fail_on):
                raise ablations.ExperimentError(f"ablate: experiment {name} failed")
            return _metrics(0.1 * overrides["train.seed"] + 0.01 * len(overrides))
        finally:
            with self.lock:
                self.active -= 1


def test_rows_cover_the_four_tables_and_spade_runs_once_per_seed(tmp_path):
    assert {r.table for r in ROWS} == {"4", "5", "6", "7"} and len({r.key for r in ROWS}) == len(ROWS)
    suite = AblationSuite(_git_repo(tmp_path / "repo"), list(ROWS), [0, 1], tmp_path / "runs", tmp_path / "logs")
    plan = suite.plan()
    spade = [p for p in plan if p.overrides == {"train.seed": p.seed, "calibrate.seed": p.seed}]
    assert len(spade) == 2 and [r.key for r in spade[0].rows] == ["t4-spade", "t5-spade", "t6-spade", "t7-spade"]
    assert len(plan) == 2 * (len(ROWS) - 3)  # the four SPADE rows share one run per seed
    assert [p.seed for p in plan] == sorted(p.seed for p in plan)  # seed-major


def test_select_rows_names_unknown_tables():
    assert {r.table for r in select_rows(["6"])} == {"6"}
    with pytest.raises(ValueError, match=r"unknown table\(s\) \['9'\]"):
        select_rows(["6", "9"])


def test_resume_reuses_finished_runs_and_reruns_after_a_code_change(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    rows = select_rows(["6"])
    fake = FakeRuns()
    results = AblationSuite(repo, rows, [0, 1], tmp_path / "runs", tmp_path / "logs", run=fake).execute(lambda m: None)
    assert len(results) == len(fake.calls) == 8
    again = FakeRuns()
    AblationSuite(repo, rows, [0, 1, 2], tmp_path / "runs", tmp_path / "logs", run=again).execute(lambda m: None)
    assert [ov["train.seed"] for _, ov in again.calls] == [2] * 4  # only the new seed ran
    (repo / "params.yaml").write_text("train:\n  seed: 1\n")  # the code digest changes: everything is stale
    third = FakeRuns()
    AblationSuite(repo, rows, [0], tmp_path / "runs", tmp_path / "logs", run=third).execute(lambda m: None)
    assert len(third.calls) == 4


def test_a_failed_run_keeps_the_finished_ones(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    rows = select_rows(["6"])
    fake = FakeRuns(fail_on="t6-rgt")
    with pytest.raises(ablations.ExperimentError, match="t6-rgt"):
        AblationSuite(repo, rows, [0], tmp_path / "runs", tmp_path / "logs", run=fake).execute(lambda m: None)
    finished = sorted(json.loads(p.read_text())["experiment"] for p in (tmp_path / "runs").glob("*.json"))
    assert [n.split("-s0-")[0] for n in finished] == ["t6-baseline", "t6-long-range"]
    retry = FakeRuns()
    AblationSuite(repo, rows, [0], tmp_path / "runs", tmp_path / "logs", run=retry).execute(lambda m: None)
    assert [n.split("-s0-")[0] for n, _ in retry.calls] == ["t6-rgt", "t6-spade"]


def test_parallel_runs_never_compute_a_shared_stage_twice(tmp_path):
    """jobs=3: two runs are in flight together only when every stage level they share was already produced by
    a finished run (so the first run goes alone: all share prepare / models / invert)."""
    repo = _git_repo(tmp_path / "repo")
    rows = [AblationRow("x", "a", "a"), AblationRow("x", "b", "b", {"model.rgt.num_blocks": 0}),
            AblationRow("x", "c", "c", {"calibrate.mode": "full"}), AblationRow("x", "d", "d", {"train.lr": 0.1})]
    spans = []
    fake = FakeRuns(delay=0.15)

    def timed(name, overrides, log):
        start = time.monotonic()
        out = fake(name, overrides, log)
        spans.append((start, time.monotonic(), overrides))
        return out

    suite = AblationSuite(repo, rows, [0, 1], tmp_path / "runs", tmp_path / "logs", run=timed, jobs=3)
    suite.execute(lambda m: None)
    assert len(spans) == 8 and fake.max_active >= 2
    for s0, e0, ov0 in spans:
        for s1, e1, ov1 in spans:
            if (s0, ov0) == (s1, ov1) or not (s0 < e1 and s1 < e0):
                continue
            later = max(s0, s1)
            produced = {k for s, e, ov in spans if e <= later for k in level_keys(ov)}
            shared = set(level_keys(ov0)) & set(level_keys(ov1))
            assert shared <= produced, (ov0, ov1)


def test_summary_mean_std_and_markdown(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    rows = select_rows(["7"])
    suite = AblationSuite(repo, rows, [0, 1, 2], tmp_path / "runs", tmp_path / "logs", run=FakeRuns())
    results = suite.execute(lambda m: None)
    summary = summarise(rows, suite.plan(), results, [0, 1, 2])
    both = next(r for r in summary["rows"] if r["key"] == "t7-spade")
    assert both["n"] == 3 and both["seeds"] == [0, 1, 2]
    r50 = both["metrics"]["R@50"]
    assert r50["per_seed"] == pytest.approx([0.02, 0.12, 0.22])
    assert r50["mean"] == pytest.approx(0.12) and r50["std"] == pytest.approx(0.1)
    text = ablation_markdown(summary, {"t7-spade": "R@50 99.9"}, paper_source="made up")
    assert "| both, fused (SPADE) | 3 | 6.0 ± 5.0 | 12.0 ± 10.0 |" in text
    assert "Paper (made up): both, fused (SPADE): R@50 99.9" in text and "`evaluate.use_pooled_logits=false`" in text
    assert mean_std([1.0]) == (1.0, 0.0)


def test_paper_numbers_name_known_rows_and_their_source():
    assert set(ablations.PAPER) <= {r.key for r in ablations.ROWS}
    assert {r.table for r in ablations.ROWS if r.key in ablations.PAPER} == {"4", "5", "6", "7"}
    summary = summarise(select_rows(["6"]), [], {}, [0])
    assert f"Paper ({ablations.PAPER_SOURCE}): baseline (no RGT, no L_rqc): R@50 / mR@50 30.5 / 26.3" in (
        ablation_markdown(summary, ablations.PAPER))


def test_pick_metrics_reads_nested_paths_and_skips_missing():
    m = pick_metrics({"closed": {"R@50": 0.5, "mR@50": float("nan")}, "chance": {"closed": {"R@50": 0.02}}})
    assert m == {"R@50": 0.5, "chance R@50": 0.02}


def test_run_ablate_dry_run_writes_reports_without_running(tmp_path, monkeypatch):
    repo = _git_repo(tmp_path / "repo")
    lines = []
    summary = run_ablate(["5"], seeds=2, dry_run=True, repo=repo, run=FakeRuns(), echo=lines.append)
    assert all(r["n"] == 0 for r in summary["rows"]) and sum("[to run]" in x for x in lines) == 8
    assert (repo / "reports/ablations.json").is_file() and "Table 5" in (repo / "reports/ablations.md").read_text()
    with pytest.raises(ValueError, match="--seeds"):
        run_ablate(["5"], seeds=0, repo=repo)


def test_dvc_exp_run_temp_returns_the_experiment_metrics(tmp_path, monkeypatch):
    """A real `dvc exp run --temp` on a one-stage DVC project: the override reaches the stage and the metrics
    come back from the experiment's commit; a failing stage is one ExperimentError naming the log."""
    repo = _git_repo(tmp_path / "proj")
    (repo / "params.yaml").write_text("train:\n  seed: 0\n")
    (repo / "run.py").write_text(
        "import json, sys, yaml\nseed = yaml.safe_load(open('params.yaml'))['train']['seed']\n"
        "if seed == 7:\n    sys.exit('seed 7 fails')\n"
        "json.dump({'closed': {'R@50': seed / 10}}, open('metrics.json', 'w'))\n"
    )
    (repo / "dvc.yaml").write_text(
        f"stages:\n  run:\n    cmd: {sys.executable} run.py\n    deps: [run.py]\n    params: [train.seed]\n"
        "    metrics:\n      - metrics.json:\n          cache: false\n"
    )
    env = ["-c", "user.email=t@t", "-c", "user.name=t"]
    dvc = ablations.dvc_command()
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", *env, "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", *env, "commit", "-qm", "init"], cwd=repo, check=True)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "t")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "t@t")
    got = dvc_exp_run(repo, "abl-s3", {"train.seed": 3}, tmp_path / "logs/abl-s3.log", metrics_file="metrics.json")
    assert got == {"closed": {"R@50": 0.3}}
    assert (repo / "params.yaml").read_text() == "train:\n  seed: 0\n"  # the workspace is untouched
    with pytest.raises(ablations.ExperimentError, match=r"abl-s7 failed .*ERROR.*log: .*abl-s7.log"):
        dvc_exp_run(repo, "abl-s7", {"train.seed": 7}, tmp_path / "logs/abl-s7.log", metrics_file="metrics.json")


def test_code_digest_follows_the_stage_dependencies(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text("stages:\n  a:\n    cmd: python a.py\n    deps: [a.py, lib]\n")
    (repo / "a.py").write_text("print(1)\n")
    (repo / "lib").mkdir()
    (repo / "lib/x.py").write_text("x = 1\n")
    (repo / "notes.md").write_text("not a dependency\n")
    first = ablations.code_digest(repo)
    assert ablations.stage_dependencies(repo) == ["a.py", "dvc.yaml", "lib", "params.yaml", "teacher/dvc.yaml"]
    (repo / "notes.md").write_text("edited\n")
    assert ablations.code_digest(repo) == first
    (repo / "lib/x.py").write_text("x = 2\n")
    assert ablations.code_digest(repo) != first


def test_code_digest_resolves_templated_deps_from_params_yaml(tmp_path):
    """``${model.sd_path}`` (the models stage's weights dep) counts as the folder params.yaml names; an absolute
    path outside the repository is left out (git cannot list it; the models stage's identity covers it)."""
    repo = _git_repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text("stages:\n  m:\n    cmd: python m.py\n    deps: ['${model.sd_path}', '${w.ckpt}']\n")
    (repo / "params.yaml").write_text(f"model:\n  sd_path: weights\nw:\n  ckpt: {tmp_path / 'outside.bin'}\n")
    (repo / "weights").mkdir()
    (repo / "weights/unet.bin").write_bytes(b"1")
    (tmp_path / "outside.bin").write_bytes(b"x")
    assert ablations.stage_dependencies(repo) == ["dvc.yaml", "params.yaml", "teacher/dvc.yaml", "weights"]
    first = ablations.code_digest(repo)
    (repo / "weights/unet.bin").write_bytes(b"2")
    assert ablations.code_digest(repo) != first
    assert ablations.interpolate("a/${x.y}/${z}", {"x": {"y": 1}, "z": "b"}) == "a/1/b"


def test_a_run_waiting_on_a_shared_stage_starts_once_the_log_shows_it_done(tmp_path):
    """jobs=2: the second run shares the first one's calibration; it starts as soon as the first run's log shows
    `train` running (calibrate is then in the run-cache), before the first run has finished."""
    repo = _git_repo(tmp_path / "repo")
    rows = [AblationRow("x", "a", "a"), AblationRow("x", "b", "b", {"model.rgt.num_blocks": 0})]
    starts, ends = {}, {}

    def staged(name, overrides, log):
        starts[name] = time.monotonic()
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("Running stage 'prepare':\nRunning stage 'invert':\nRunning stage 'calibrate':\n")
        time.sleep(0.3)
        log.write_text(log.read_text() + "Running stage 'train':\n")
        time.sleep(6.0 if name.startswith("a-") else 0.1)
        ends[name] = time.monotonic()
        return _metrics(0.5)

    AblationSuite(repo, rows, [0], tmp_path / "runs", tmp_path / "logs", run=staged, jobs=2).execute(lambda m: None)
    a, b = sorted(starts)
    assert starts[b] < ends[a]  # b did not wait for a to finish ...
    assert starts[b] >= starts[a] + 0.3  # ... but for a's calibration
    assert ablations.levels_done_in_log(tmp_path / "logs" / f"{a}.log") == 3
