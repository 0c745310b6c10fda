"""Stage outputs: leftovers of killed runs are swept at stage start, and an unwritable output fails before the
work (``pipeline.io.prepare_outputs`` / ``ensure_writable``, called first by every DVC stage)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.io import (
    OutputNotWritableError,
    atomic_dir,
    ensure_writable,
    prepare_outputs,
    replace_path,
    sweep_leftovers,
    temp_path,
)

from .test_prepare import _params, _run


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped)."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(out.stdout)


def test_every_temp_naming_of_pipeline_io_is_swept_for_dead_pids_only(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "index").mkdir()
    leftovers = [
        tmp_path / f".prepared.tmp-{dead}",  # atomic_dir work folder (SIGKILL of prepare)
        tmp_path / f".calibrate.tmp-{dead}",  # another stage's work folder beside it
        tmp_path / f".metrics.json.tmp-{dead}",  # atomic_write_* temp file
        tmp_path / f".calibrate.old-{dead}",  # replace_path's old copy whose new version is in place
        tmp_path / f".spade-probe.tmp-{dead}",  # ensure_writable's probe
        out / f".index.tmp-{dead}",  # inside an output folder
    ]
    (tmp_path / "calibrate").mkdir()
    for p in leftovers:
        p.mkdir() if "json" not in p.name and "probe" not in p.name else p.write_text("x")
    kept = [tmp_path / f".prepared.tmp-{live}", tmp_path / ".prepared.tmp-abc", tmp_path / ".gitignore"]
    for p in kept:
        p.write_text("x")
    prepare_outputs(out)
    assert [p for p in leftovers if p.exists() or p.is_symlink()] == []
    assert all(p.exists() for p in kept) and (out / "index").is_dir() and (tmp_path / "calibrate").is_dir()


def test_an_old_copy_whose_output_is_missing_is_restored_not_removed(tmp_path):
    """A kill between the two renames of replace_path leaves no output: the sweep puts the old version back."""
    dead = _dead_pid()
    old = tmp_path / f".calibrate.old-{dead}"
    old.mkdir()
    (old / "model.safetensors").write_text("previous")
    (tmp_path / f".calibrate.tmp-{dead}").mkdir()  # the unfinished new version
    assert sweep_leftovers(tmp_path) == [tmp_path / f".calibrate.tmp-{dead}", tmp_path / "calibrate"]
    assert (tmp_path / "calibrate" / "model.safetensors").read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["calibrate"]


def test_io_helpers_keep_using_the_swept_names(tmp_path):
    assert temp_path(tmp_path / "x").name == f".x.tmp-{os.getpid()}"
    with atomic_dir(tmp_path / "out") as work:
        assert work.name == f".out.tmp-{os.getpid()}"
        (work / "a").write_text("1")
    src = tmp_path / "src"
    src.mkdir()
    replace_path(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_prepare_sweeps_the_work_folder_of_a_killed_run(tmp_path):
    dead = _dead_pid()
    left = tmp_path / f".prepared.tmp-{dead}"
    (left / "dataset").mkdir(parents=True)
    _run(_params(), tmp_path / "prepared")
    assert sorted(os.listdir(tmp_path)) == ["prepared"]


def test_output_whose_parent_is_a_file_fails_before_the_work(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(OutputNotWritableError, match=r"data/prepared: cannot be created, .*data is not a folder"):
        _run(_params(), tmp_path / "data" / "prepared")


def test_unwritable_probe_is_a_one_line_error_naming_the_path(tmp_path, monkeypatch):
    """Simulates a read-only folder or mount (works as root too): the probe cannot be created."""
    real_open = os.open

    def refusing_open(path, flags, *args):
        if ".spade-probe.tmp-" in str(path):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    out = tmp_path / "artifacts" / "calibrate"
    with pytest.raises(OutputNotWritableError) as err:
        ensure_writable(out)
    assert str(err.value) == f"{out}: output is not writable ({tmp_path}: Read-only file system)"
    assert "read-only" in err.value.hint


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o555 does not stop root from writing, "
                    "and ensure_writable honestly reports such a folder as writable (see the probe test)")
def test_chmod_read_only_output_folder(tmp_path):
    ro = tmp_path / "artifacts"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputNotWritableError, match=r"artifacts/calibrate: output is not writable .*denied"):
            ensure_writable(ro / "calibrate")
    finally:
        ro.chmod(0o755)


def test_writable_outputs_pass_and_leave_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    for p in (tmp_path / "out", tmp_path / "new" / "deep" / "x.json", tmp_path / "out" / "y.csv"):
        assert ensure_writable(p) == p
    assert sorted(str(p.relative_to(tmp_path)) for p in Path(tmp_path).rglob("*")) == ["out"]


def test_every_stage_run_sweeps_the_output_folders(tmp_path, monkeypatch):
    """A leftover of a stage that DVC now skips (its deps unchanged) is still swept when any stage runs."""
    from types import SimpleNamespace

    from pipeline.runner import run_stage

    monkeypatch.chdir(tmp_path)
    dead = _dead_pid()
    for p in (tmp_path / "data" / f".prepared.tmp-{dead}", tmp_path / "artifacts" / f".train.old-{dead}"):
        p.mkdir(parents=True)
    (tmp_path / "artifacts" / "train").mkdir()
    (tmp_path / "params.yaml").write_text("data: {split: closed}\n")
    run_stage(SimpleNamespace(PARAMS=("data",), run=lambda p: None), "params.yaml")
    assert os.listdir(tmp_path / "data") == [] and os.listdir(tmp_path / "artifacts") == ["train"]
