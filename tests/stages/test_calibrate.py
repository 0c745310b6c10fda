"""Stage calibrate on the tiny workspace: trained parameters, ablation modes, resume, store checks, round trip."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zarr
from safetensors.torch import load_file

from pipeline import calibration, paths
from pipeline.inversion import calibration_records
from pipeline.models import load_models
from pipeline.stores import StoreMismatchError
from pipeline.student import load_student
from stages import calibrate as calibrate_stage

from .conftest import run_stage_in, tiny_params_dict, write_params

CAL = {"steps": 6, "checkpoint_every": 2, "batch_size": 4, "heldout_fraction": 0.25, "lr": 0.01, "num_workers": 0}
OUT = Path("artifacts/calibrate")
CKPT = Path("artifacts/calibrate_checkpoints")


def _params(**calibrate) -> dict:
    return tiny_params_dict(calibrate={**CAL, **calibrate})


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_inverted(tiny_base, tmp_path_factory) -> Path:
    """The tiny workspace with the inversion store, shared (read-only) by the tests of this file."""
    root = _copy(tiny_base, tmp_path_factory.mktemp("cal") / "inverted")
    run_stage_in(root, "invert", tiny_params_dict())
    return root


@pytest.fixture(scope="session")
def lora_run(tiny_inverted, tmp_path_factory):
    """One uninterrupted lora calibration; also keeps the student's final UNet and CLIP weights in memory."""
    ws = _copy(tiny_inverted, tmp_path_factory.mktemp("cal") / "lora")
    seen = {}
    real = calibrate_stage.save_student

    def spy(out_dir, student):
        seen["unet"] = {k: v.clone() for k, v in student.unet.state_dict().items()}
        seen["clip"] = {k: v.clone() for k, v in student.clip.model.state_dict().items()}
        return real(out_dir, student)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibrate_stage, "save_student", spy)
        run_stage_in(ws, "calibrate", _params())
    return ws, seen


def _metrics(ws: Path) -> dict:
    return json.loads((ws / "artifacts/calibrate_metrics.json").read_text())


def _run_figures(ws: Path) -> dict:
    return json.loads((ws / "artifacts/calibrate_run.json").read_text())


def test_lora_changes_only_lora_and_adapter(lora_run):
    ws, seen = lora_run
    base = load_models(ws / "artifacts/models")
    original = base.diffusion.unet.state_dict()
    trained = seen["unet"]
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert lora and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in lora)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in lora.items())  # B starts at 0: it trained
    frozen = {k.replace(".base_layer", ""): v for k, v in trained.items() if "lora_" not in k}
    assert frozen.keys() == original.keys()
    assert all(torch.equal(frozen[k], original[k]) for k in original)  # base weights bit-identical
    assert all(torch.equal(v, base.clip.model.state_dict()[k]) for k, v in seen["clip"].items())
    # the adapter moved away from its initialisation (token_bias starts at the empty-prompt embedding)
    from pipeline.student import empty_prompt_tokens

    adapter = load_file(str(ws / OUT / "adapter.safetensors"))
    assert not torch.allclose(adapter["token_bias"], empty_prompt_tokens(base))
    saved = load_file(str(ws / OUT / "lora.safetensors"))
    assert len(saved) == len(lora) and sorted((ws / OUT).iterdir()) == sorted(
        ws / OUT / f for f in ("adapter.safetensors", "lora.safetensors", "student.json")
    )


def test_lora_calibration_improves_heldout_maps(lora_run):
    ws, _ = lora_run
    m = _metrics(ws)
    assert m["steps"] == 6 and m["num_heldout_images"] == 3 and m["num_train_images"] == 9
    assert m["heldout_l1_after"] < m["heldout_l1_before"]
    assert m["heldout_corr_after"] > m["heldout_corr_before"]
    run = _run_figures(ws)  # timings, memory, device: kept out of the DVC metrics file
    assert run["steps_per_second"] > 0 and 0 <= run["data_share"] < 1 and run["device"] == "cpu"
    assert not {"seconds", "steps_per_second", "data_share", "peak_memory_mb", "device", "teacher"} & set(m)
    curve = (ws / "artifacts/calibrate_curve.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and [r.split(",")[0] for r in curve[1:]] == [str(s) for s in range(1, 7)]
    config = json.loads((ws / OUT / "student.json").read_text())
    assert config["mode"] == "lora" and config["num_tokens"] == 77 and config["attn_shape"] == [8, 8]


def test_load_student_reproduces_the_trained_maps(lora_run, monkeypatch):
    ws, _ = lora_run
    monkeypatch.chdir(ws)
    models = load_models()
    student = load_student(models, OUT)
    assert not any(p.requires_grad for p in student.unet.parameters())
    store = calibration.open_store(models, 64)
    from pipeline.calibration_data import CalibrationDataset, heldout_split
    from spade_core.calibration import teacher_mode
    from spade_core.diffusion import AttentionCapture

    _, held = heldout_split(store.geometry.num_images, 0.25, 0)
    dataset = CalibrationDataset(str(paths.INVERT_STORE), calibration_records(), 64, 4)
    runner = calibration.MapRunner(student, AttentionCapture(student.unet), (8, 8), latents={})
    got = calibration.heldout_metrics(runner, dataset, held, 4)
    m = _metrics(ws)
    assert got["l1"] == pytest.approx(m["heldout_l1_after"], rel=1e-5)
    assert got["corr"] == pytest.approx(m["heldout_corr_after"], rel=1e-5)
    with teacher_mode(student.unet):  # LoRA really loaded: without it the maps are those of the base UNet
        plain = calibration.heldout_metrics(runner, dataset, held, 4)
    assert plain["l1"] != pytest.approx(got["l1"], rel=1e-4)


def test_resume_after_crash_gives_identical_weights(lora_run, tiny_inverted, tmp_path, monkeypatch):
    ref, _ = lora_run
    ws = _copy(tiny_inverted, tmp_path / "ws")
    monkeypatch.setenv(calibrate_stage.STOP_ENV, "4")
    run_stage_in(ws, "calibrate", _params(), monkeypatch)
    assert not (ws / OUT).exists()
    assert [d.name for d in (ws / CKPT).iterdir()] == ["step-0000004"]
    stale = ws / CKPT / "step-0000002"  # a checkpoint of other settings is removed, not resumed
    stale.mkdir()
    (stale / "state.json").write_text(json.dumps({"settings": "other", "step": 2}))
    monkeypatch.delenv(calibrate_stage.STOP_ENV)
    run_stage_in(ws, "calibrate", _params(), monkeypatch)
    assert not stale.exists()
    assert _run_figures(ws)["resumed_from_step"] == 4
    for name in ("lora.safetensors", "adapter.safetensors"):
        got, want = load_file(str(ws / OUT / name)), load_file(str(ref / OUT / name))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert (ws / "artifacts/calibrate_curve.csv").read_text() == (ref / "artifacts/calibrate_curve.csv").read_text()


def test_full_mode_fine_tunes_the_whole_unet(tiny_inverted, tmp_path, monkeypatch):
    ws = _copy(tiny_inverted, tmp_path / "ws")
    run_stage_in(ws, "calibrate", _params(mode="full", steps=1, cache_latents=False), monkeypatch)
    assert not (ws / OUT / "lora.safetensors").exists()
    models = load_models(ws / "artifacts/models")
    original = {k: v.clone() for k, v in models.diffusion.unet.state_dict().items()}
    student = load_student(models, ws / OUT)
    tuned = student.unet.state_dict()
    changed = [k for k in original if not torch.equal(original[k], tuned[k])]
    assert any("attn2.to_k" in k for k in changed) and any("conv_in" in k or "resnets" in k for k in changed)
    assert _metrics(ws)["mode"] == "full"


def test_none_mode_trains_nothing_and_writes_outputs(tiny_inverted, tmp_path, monkeypatch):
    ws = _copy(tiny_inverted, tmp_path / "ws")
    run_stage_in(ws, "calibrate", _params(mode="none"), monkeypatch)
    m = _metrics(ws)
    assert m["steps"] == 0 and m["heldout_l1_after"] == m["heldout_l1_before"] is not None
    assert sorted(p.name for p in (ws / OUT).iterdir()) == ["adapter.safetensors", "student.json"]
    assert not (ws / CKPT).exists()
    models = load_models(ws / "artifacts/models")
    original = {k: v.clone() for k, v in models.diffusion.unet.state_dict().items()}
    student = load_student(models, ws / OUT)
    assert all(torch.equal(v, student.unet.state_dict()[k]) for k, v in original.items())
    from pipeline.student import empty_prompt_tokens

    assert torch.equal(student.captioner.token_bias.detach(), empty_prompt_tokens(models))
    from pipeline.student import student_condition

    cond = student_condition(student, torch.rand(2, 3, 64, 64))  # every image: the empty prompt, exactly
    assert torch.equal(cond, empty_prompt_tokens(models)[None].expand(2, -1, -1).to(cond.dtype))
    assert (ws / "artifacts/calibrate_curve.csv").read_text().splitlines()[1].startswith("0,")


def test_store_from_another_teacher_is_refused(tiny_inverted, tmp_path, monkeypatch):
    ws = _copy(tiny_inverted, tmp_path / "ws")
    group = zarr.open_group(ws / "artifacts/invert/teacher.zarr", mode="r+")
    settings = dict(group.attrs)["settings"]
    group.attrs["settings"] = {**settings, "teacher": "0123456789abcdef"}
    with pytest.raises(StoreMismatchError, match="teacher: store has '0123456789abcdef'"):
        run_stage_in(ws, "calibrate", _params(), monkeypatch)
    assert not (ws / OUT).exists()


def test_bad_read_block_is_refused(tiny_inverted, tmp_path, monkeypatch):
    ws = _copy(tiny_inverted, tmp_path / "ws")
    with pytest.raises(ValueError, match="read_block=3 must divide the store's shard size 4"):
        run_stage_in(ws, "calibrate", _params(read_block=3), monkeypatch)
    assert not (ws / OUT).exists() and not (ws / CKPT).exists()


@pytest.mark.slow
def test_two_processes_match_one(lora_run, tiny_inverted, tmp_path, monkeypatch):
    """2 ranks x 2 images = 1 process accumulating 2 micro-batches of 2: the same global batches and the same
    split of the gradient sum, so equal up to round-off. (Against the whole-batch run the weights differ by up to
    ~3e-3 after 6 steps at lr 1e-2: Adam turns the round-off of near-zero gradient entries into lr-sized steps;
    the single-process micro-batch run differs from it exactly as much, so that is not a DDP effect.)"""
    ref = _copy(tiny_inverted, tmp_path / "ref")
    run_stage_in(ref, "calibrate", _params(micro_batch=2), monkeypatch)
    ws = _copy(tiny_inverted, tmp_path / "ws")
    write_params(ws, _params())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "stages.cli", "calibrate", "--nproc", "2"]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _run_figures(ws)["world_size"] == 2
    whole, _ = lora_run
    for name in ("lora.safetensors", "adapter.safetensors"):
        got, want = load_file(str(ws / OUT / name)), load_file(str(ref / OUT / name))
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
        other = load_file(str(whole / OUT / name))
        assert max(float((other[k] - want[k]).abs().max()) for k in want) < 1e-2  # lr-sized at most
