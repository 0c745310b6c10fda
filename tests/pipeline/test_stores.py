from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.stores import (
    InversionStore,
    ShardWriter,
    StoreIncompleteError,
    StoreMismatchError,
    prompt_rows,
)

from .conftest import GEOM, IDS, SETTINGS, shard_arrays


def test_shard_geometry():
    assert GEOM.num_shards == 3
    assert GEOM.shard_range(2) == (4, 5)


def test_a_store_without_latents_has_no_latents_array(tmp_path):
    """``store_latents=False`` (invert.store_latents: false): every other array as usual, no ``latents`` on disk;
    a writer handing the rows of a store with latents is refused, a reader gets the arrays that exist."""
    from dataclasses import replace

    geom = replace(GEOM, store_latents=False)
    assert geom.arrays == ("attn", "tokens", "roles", "triplet_index", "lengths", "recon_error")
    store = InversionStore.create_or_open(tmp_path / "s.zarr", geom, IDS, SETTINGS)
    for shard in range(geom.num_shards):
        store.write_shard(shard, {k: v for k, v in shard_arrays(shard).items() if k != "latents"})
    store.write_manifest()
    done = InversionStore.open(tmp_path / "s.zarr")
    assert done.geometry == geom and "latents" not in done.group and not (tmp_path / "s.zarr/latents").exists()
    assert set(done.read(0, 5)) == set(geom.arrays)
    np.testing.assert_array_equal(done.read(0, 2)["attn"], shard_arrays(0)["attn"])
    writer = ShardWriter(store, 0)
    with pytest.raises(KeyError, match="'latents' is not a store array"):
        writer.add({"latents": shard_arrays(0)["latents"]})
    with pytest.raises(KeyError, match="array 'attn' missing"):
        InversionStore.create_or_open(tmp_path / "t.zarr", geom, IDS, SETTINGS).write_shard(0, {})


def test_write_read_and_completeness(tmp_path):
    loc = tmp_path / "s.zarr"
    store = InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS)
    assert store.shards_for_rank(1, 2) == [1]
    written = {}
    for shard in (0, 2):
        written[shard] = shard_arrays(shard)
        store.write_shard(shard, written[shard])
    with pytest.raises(StoreIncompleteError, match=r"shards \[1\]"):
        InversionStore.open(loc)
    with pytest.raises(StoreIncompleteError):
        store.write_manifest()
    # reopen (resume): same settings -> the complete shards are still there
    again = InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS)
    assert [again.is_complete(s) for s in range(3)] == [True, False, True]
    again.write_shard(1, shard_arrays(1))
    again.write_manifest({"rank_count": 1})
    done = InversionStore.open(loc, expected={"method": "belm"})
    block = done.read(4, 5)
    np.testing.assert_array_equal(block["latents"], written[2]["latents"])
    np.testing.assert_array_equal(block["attn"], written[2]["attn"])
    assert block["attn"].dtype == np.float16
    assert done.image_ids == IDS
    assert list(done.iter_shard_blocks()) == [(0, 2), (2, 4), (4, 5)]
    # one shard file per array: a store is a few files
    chunk_files = [p for p in (loc / "latents").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunk_files) == 3


def test_refuses_to_mix_settings(tmp_path):
    loc = tmp_path / "s.zarr"
    InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS).write_shard(0, _shard_arrays_for(loc))
    with pytest.raises(StoreMismatchError, match="(?s)unfinished run.*method: store has 'belm', current is 'ddim'"):
        InversionStore.create_or_open(loc, GEOM, IDS, {**SETTINGS, "method": "ddim"})
    with pytest.raises(StoreMismatchError, match="image_ids_hash"):
        InversionStore.create_or_open(loc, GEOM, [*IDS[:4], "other"], SETTINGS)
    with pytest.raises(StoreMismatchError, match="teacher"):
        InversionStore.open(loc, expected={"teacher": "xyz"}, require_complete=False)
    fresh = InversionStore.create_or_open(loc, GEOM, IDS, {**SETTINGS, "method": "ddim"}, replace_mismatched=True)
    assert not fresh.is_complete(0)
    assert fresh.settings["method"] == "ddim"


def _shard_arrays_for(loc):
    return shard_arrays(0)


def test_bad_shard_input(tmp_path):
    store = InversionStore.create_or_open(tmp_path / "s.zarr", GEOM, IDS, SETTINGS)
    arrays = shard_arrays(0)
    with pytest.raises(ValueError, match="rows"):
        store.write_shard(0, {**arrays, "lengths": np.zeros(3)})
    arrays.pop("attn")
    with pytest.raises(KeyError, match="attn"):
        store.write_shard(0, arrays)
    assert not store.is_complete(0)
    with pytest.raises(FileNotFoundError, match="run the `invert` stage"):
        InversionStore.open(tmp_path / "nothing.zarr")


def test_finished_store_with_other_settings_is_replaced(tmp_path):
    loc = tmp_path / "s.zarr"
    store = InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS)
    for shard in range(GEOM.num_shards):
        store.write_shard(shard, shard_arrays(shard))
    store.write_manifest()
    same = InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS)
    assert all(same.is_complete(s) for s in range(GEOM.num_shards))
    other = InversionStore.create_or_open(loc, GEOM, IDS, {**SETTINGS, "num_steps": 20})
    assert not any(other.is_complete(s) for s in range(GEOM.num_shards))
    assert other.settings["num_steps"] == 20


def test_shard_writer_assembles_batches_into_one_shard(tmp_path):
    store = InversionStore.create_or_open(tmp_path / "s.zarr", GEOM, IDS, SETTINGS)
    arrays = shard_arrays(0)
    writer = ShardWriter(store, 0)
    for row in range(2):  # two batches of one image, each in two parts
        writer.add({k: v[row : row + 1] for k, v in arrays.items() if k in ("latents", "attn", "recon_error")})
        writer.add({k: v[row : row + 1] for k, v in arrays.items() if k not in ("latents", "attn", "recon_error")})
    with pytest.raises(KeyError, match="not a store array"):
        writer.add({"image": np.zeros(1)})
    assert not store.is_complete(0)
    writer.write()
    assert store.is_complete(0)
    got = store.read(0, 2)
    for name, value in arrays.items():
        np.testing.assert_array_equal(got[name], value.astype(got[name].dtype), err_msg=name)


def test_prompt_rows():
    prompts = [
        SimpleNamespace(token_ids=torch.arange(6) + i, role=torch.full((6,), i), triplet_index=torch.zeros(6), length=i)
        for i in range(3)
    ]
    rows = prompt_rows(prompts)
    assert sorted(rows) == ["lengths", "roles", "tokens", "triplet_index"]
    assert rows["tokens"].shape == (3, 6) and rows["tokens"][2, 0] == 2
    assert rows["roles"][1].tolist() == [1] * 6 and rows["lengths"].tolist() == [0, 1, 2]


def test_partial_files_of_a_killed_write_are_swept_on_the_next_open(tmp_path):
    """zarr writes each shard file through ``<file>.<uuid>.partial``; a SIGKILL leaves it inside the DVC output.
    The next ``create_or_open`` removes those older than this process, never a newer one (another rank's)."""
    import os
    import time

    from pipeline.stores import PROCESS_START, sweep_partials

    loc = tmp_path / "s.zarr"
    InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS).write_shard(0, shard_arrays(0))
    stale = [loc / "latents" / "c" / "1.0123abcd.partial", loc / "attn" / "c" / "1.4567ef.partial"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a shard")
        os.utime(p, (PROCESS_START - 60, PROCESS_START - 60))
    fresh = loc / "latents" / "c" / "2.89ab.partial"
    fresh.write_bytes(b"being written by another rank of this run")
    store = InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS)  # resume
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert store.is_complete(0) and not store.is_complete(1)
    assert not [p for p in loc.rglob("*.partial") if p != fresh]
    assert sweep_partials(loc, older_than=time.time() + 1) == [str(fresh)]
    assert sweep_partials("s3://bucket/x.zarr") == []  # remote stores are left alone


def test_mismatch_error_carries_its_hint(tmp_path):
    loc = tmp_path / "s.zarr"
    InversionStore.create_or_open(loc, GEOM, IDS, SETTINGS).write_shard(0, shard_arrays(0))
    with pytest.raises(StoreMismatchError) as err:
        InversionStore.create_or_open(loc, GEOM, IDS, {**SETTINGS, "method": "ddim"})
    assert str(err.value).startswith(f"{loc}: ") and "on_mismatch=replace" in err.value.hint
    with pytest.raises(StoreMismatchError) as err:
        InversionStore.open(loc, expected={"teacher": "xyz"}, require_complete=False)
    assert "dvc repro invert" in err.value.hint


KILLED_WRITER = """
import os, pathlib, signal, sys
from pipeline.stores import InversionStore, StoreGeometry
geom = StoreGeometry(num_images=5, latent_shape=(4, 8, 8), num_tokens=6, attn_shape=(8, 8), shard_size=2)
store = InversionStore.create_or_open(sys.argv[1], geom, [f"img{i}" for i in range(5)], {"method": "belm"})
real = pathlib.Path.replace
def replace(self, target):
    if self.name.endswith(".partial") and "latents" in str(self):
        os.kill(os.getpid(), signal.SIGKILL)  # killed between zarr's write of the temp file and its rename
    return real(self, target)
pathlib.Path.replace = replace
store.write_shard(0, {k: v for k, v in __import__("pickle").loads(bytes.fromhex(sys.argv[2])).items()})
"""

RESUME = KILLED_WRITER.split("real = ")[0]


def test_sigkill_during_a_shard_write_leaves_no_partial_file_after_the_resume(tmp_path):
    import os
    import pickle
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    loc = tmp_path / "s.zarr"
    blob = pickle.dumps(shard_arrays(0)).hex()
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(loc), blob], env={**os.environ,
                          "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(loc.rglob("*.partial")), "the killed writer should have left its temporary file"
    resume = subprocess.run([sys.executable, "-c", RESUME, str(loc)], env={**os.environ, "PYTHONPATH": str(repo)},
                            capture_output=True, text=True, timeout=300)  # fmt: skip (the next run: a new process)
    assert resume.returncode == 0, resume.stderr
    assert not list(loc.rglob("*.partial"))
    store = InversionStore.create_or_open(loc, GEOM, IDS, {"method": "belm"})
    assert not store.is_complete(0)
    store.write_shard(0, shard_arrays(0))
    assert store.is_complete(0)
