import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.inversion import random_noise
from pipeline.stores import ARRAY_SPECS, InversionStore, StoreMismatchError
from stages import invert as invert_stage

from .conftest import run_stage_in, tiny_params_dict, write_params

STORE = Path("artifacts/invert/teacher.zarr")


def _arrays(ws: Path) -> dict[str, np.ndarray]:
    store = InversionStore.open(ws / STORE)
    return {**store.read(0, store.geometry.num_images), "image_ids": np.array(store.image_ids)}


def test_invert_writes_complete_store_and_rerun_is_noop(tiny_workspace, monkeypatch):
    raw = tiny_params_dict()
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)
    store = InversionStore.open(tiny_workspace / STORE, expected={"method": "belm", "num_steps": 4})
    g = store.geometry
    assert g.num_images == 12 and g.num_shards == 3
    data = store.read(0, g.num_images)
    assert "latents" not in data and "latents" not in store.group  # invert.store_latents: false (the default)
    # maps: probabilities over tokens, so every pixel's token distribution sums to 1 (fp16 storage)
    sums = data["attn"].astype(np.float32).sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, atol=5e-3)
    assert (data["lengths"] > 2).all()
    assert set(np.unique(data["roles"])) <= {0, 1, 2, 3}
    # BELM pair: exact reconstruction of the measured images (fp32 round-off)
    measured = data["recon_error"][~np.isnan(data["recon_error"])]
    assert len(measured) > 0 and measured.max() < 1e-3
    metrics = (tiny_workspace / "artifacts/invert_metrics.json").read_text()
    assert '"unet_calls_per_image": 4' in metrics
    m = json.loads(metrics)
    # honest counts: 4 calls per image for the maps and noise, plus 4 for each reconstruction-checked image
    assert m["unet_calls_total"] == 12 * 4 + len(measured) * 4 and m["reconstruction_checked_images"] == len(measured)
    on_disk = sum(f.stat().st_size for f in (tiny_workspace / STORE).rglob("*") if f.is_file())
    assert abs(m["store_bytes_per_image"] * 12 - on_disk) < 12 * 512  # measured, not estimated
    assert m["raw_bytes_per_image"] == {"attn": data["attn"][0].nbytes}
    run = json.loads((tiny_workspace / "artifacts/invert_run.json").read_text())  # not the DVC metrics
    assert run["world_size"] == 1 and run["images_per_second_rank0"] > 0 and run["teacher"] == m_teacher(tiny_workspace)
    assert not {"images_per_second_rank0", "world_size", "teacher"} & set(m)
    loc = m["localisation"]  # the random tiny teacher: scored, whatever it scores
    assert set(loc) == {"entity", "entity-instance", "predicate"} and loc["entity"]["n"] > 0
    assert 0 <= loc["entity"]["pointing"] <= 1 and 0 < loc["entity"]["chance"] < 1

    def fail(*args, **kwargs):
        raise AssertionError("a complete shard was recomputed")

    monkeypatch.setattr(InversionStore, "write_shard", fail)
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)  # nothing left to do


def m_teacher(ws: Path) -> str:
    return json.loads((ws / "artifacts/models/manifest.json").read_text())["diffusion"]["identity"]


def test_store_latents_keeps_the_noise_pair_and_changes_nothing_else(tiny_workspace, tmp_path, tiny_base,
                                                                     monkeypatch):
    plain = tmp_path / "plain"
    import shutil

    shutil.copytree(tiny_base, plain)
    run_stage_in(plain, "invert", tiny_params_dict())
    run_stage_in(tiny_workspace, "invert", tiny_params_dict(invert={"store_latents": True}), monkeypatch)
    got, want = _arrays(tiny_workspace), _arrays(plain)
    assert got["latents"].shape == (12, 2, 4, 8, 8) and np.isfinite(got["latents"]).all()
    for name in want:  # the maps and prompts do not depend on storing the noise
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    m = json.loads((tiny_workspace / "artifacts/invert_metrics.json").read_text())
    assert m["raw_bytes_per_image"] == {"attn": got["attn"][0].nbytes, "latents": got["latents"][0].nbytes}
    # BELM's noise regenerates the measured images exactly (fp32 round-off): what the stored pair is for
    assert m["reconstruction_error_max"] < 1e-3


def test_attn_layers_choose_the_recorded_layers_and_calibrate_follows(tiny_workspace, monkeypatch):
    """invert.attn_layers [up]: the teacher maps average the decoder's cross-attention layers only; the store
    records the choice and calibrate's student averages the same layers (else its maps would not be comparable)."""
    from pipeline import calibration
    from spade_core.diffusion import AttentionCapture, cross_attention_layers

    run_stage_in(tiny_workspace, "invert", tiny_params_dict(invert={"attn_layers": ["up"]}), monkeypatch)
    store = InversionStore.open(tiny_workspace / STORE)
    assert store.settings["attn_layers"] == ["up"]
    seen = []
    real_init = AttentionCapture.__init__

    def spy(self, unet, layers=None, **kwargs):
        real_init(self, unet, layers=layers, **kwargs)
        seen.append((list(self.layers), cross_attention_layers(unet, ["up"])))

    monkeypatch.setattr(calibration.AttentionCapture, "__init__", spy)
    run_stage_in(tiny_workspace, "calibrate", tiny_params_dict(calibrate={"steps": 1}), monkeypatch)
    assert seen and all(layers == up for layers, up in seen)
    assert all(name.startswith("up_blocks.") for name in seen[0][0])


def test_resume_after_crash_equals_uninterrupted_run(tiny_workspace, tiny_base, tmp_path, monkeypatch):
    raw = tiny_params_dict()
    reference = tmp_path / "ref"
    import shutil

    shutil.copytree(tiny_base, reference)
    run_stage_in(reference, "invert", raw)

    real_write = InversionStore.write_shard
    calls = {"n": 0}

    def crash_after_first(self, shard, arrays):
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        real_write(self, shard, arrays)

    monkeypatch.setattr(InversionStore, "write_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_stage_in(tiny_workspace, "invert", raw, monkeypatch)
    partial = InversionStore.open(tiny_workspace / STORE, require_complete=False)
    assert [partial.is_complete(s) for s in range(3)] == [True, False, False]
    monkeypatch.setattr(InversionStore, "write_shard", real_write)
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)
    got, want = _arrays(tiny_workspace), _arrays(reference)
    assert set(got) == set(want) == {*ARRAY_SPECS, "image_ids"} - {"latents"}
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # no timing or process count in the cached output: identical arrays give an identical artifact (DVC hash)
    assert (tiny_workspace / STORE / "zarr.json").read_bytes() == (reference / STORE / "zarr.json").read_bytes()


def test_unfinished_store_with_other_settings_is_refused(tiny_workspace, monkeypatch):
    raw = tiny_params_dict()
    monkeypatch.setattr(InversionStore, "write_manifest", lambda self, extra=None: None)
    monkeypatch.setattr(invert_stage, "finish", lambda *a, **k: None)
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)  # complete shards, but no manifest
    other = tiny_params_dict(invert={"num_steps": 5})
    with pytest.raises(StoreMismatchError, match="num_steps: store has 4, current is 5"):
        run_stage_in(tiny_workspace, "invert", other, monkeypatch)


def test_random_noise_ablation_uses_per_image_seeds(tiny_workspace, monkeypatch):
    raw = tiny_params_dict(invert={"noise": "random", "store_latents": True})
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)
    store = InversionStore.open(tiny_workspace / STORE, expected={"noise": "random"})
    lat = store.read(0, 12)["latents"]
    ids = store.image_ids
    expected = random_noise(0, ids[5], lat.shape[2:]).numpy()
    np.testing.assert_array_equal(lat[5, 0], expected)
    assert np.isnan(store.read(0, 12)["recon_error"]).all()


@pytest.mark.slow
def test_two_processes_write_the_same_store(tiny_workspace, tiny_base, tmp_path):
    raw = tiny_params_dict()
    import shutil

    single = tmp_path / "single"
    shutil.copytree(tiny_base, single)
    run_stage_in(single, "invert", raw)
    write_params(tiny_workspace, raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "stages.cli", "invert", "--nproc", "2"]
    proc = subprocess.run(cmd, cwd=tiny_workspace, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = _arrays(tiny_workspace), _arrays(single)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_same_images_with_other_relations_are_inverted_again(tiny_workspace, monkeypatch):
    # prepare run again with other filters keeps the image ids but changes their triplets (hence the prompts):
    # a finished store of the old prompts must be replaced, not resumed as complete
    from dataclasses import replace

    from pipeline.datasets.index import index_metadata, read_index, write_index

    raw = tiny_params_dict()
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)
    before = InversionStore.open(tiny_workspace / STORE)
    index = tiny_workspace / "data/prepared/index/train.parquet"
    records, meta = read_index(index), index_metadata(index)
    first = next(i for i, r in enumerate(records) if r.usable_for_calibration and len(r.relations) > 1)
    records[first] = replace(records[first], relations=records[first].relations[:1])
    write_index(index, records, meta.pop("image_root"), {k: v for k, v in meta.items() if k != "index_version"})
    writes = []
    real_write = InversionStore.write_shard
    monkeypatch.setattr(InversionStore, "write_shard", lambda self, s, a: (writes.append(s), real_write(self, s, a)))
    run_stage_in(tiny_workspace, "invert", raw, monkeypatch)
    after = InversionStore.open(tiny_workspace / STORE)
    assert sorted(writes) == [0, 1, 2] and after.image_ids == before.image_ids
    assert after.settings["prompts"] != before.settings["prompts"]
