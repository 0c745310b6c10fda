"""The team workflow of the README, end to end, against a real S3-protocol server on loopback (moto).

A project repository is built in tmp from the tracked files of this checkout with the tiny params; ``dvc repro
invert`` runs there and ``dvc push`` / ``dvc push --run-cache`` upload to ``s3://bucket/spade`` on the moto
server. Fresh ``git clone``s then pull and reproduce, and we assert on what DVC prints (never on timing).

Measured DVC 3.67 behaviour the tests pin down:

* ``dvc pull invert`` fetches the outputs of ``invert`` only; ``--with-deps`` (or ``dvc repro --pull``) also
  fetches the upstream outputs. Either way ``invert`` is never re-executed in the clone.
* ``dvc pull --run-cache`` transfers the run-cache *entries* only (small YAML files), not the outputs they name;
  ``dvc repro --pull`` pulls the entries and the outputs of each stage it restores from them.
* A plain ``dvc pull`` (no target) exits 1 while later stages (calibrate, train, ...) have no ``dvc.lock``
  entry yet ("Checkout failed for following targets"), so the tests always name their target.
* DVC never run-caches a stage with a ``persist: true`` output, so while ``invert`` is declared that way (for
  its resumable store) a clone without ``dvc.lock`` restores ``prepare``/``models`` from the run cache and
  recomputes ``invert`` (deterministically: the store equals the original).
* An unreachable remote fails fast with ``AWS_MAX_ATTEMPTS=1`` (botocore's default retries take ~10-75 s).

The last tests check that pulled artifacts are content-addressed: each records the identity (hash) of the
models it was made with, and a consumer refuses one made with another teacher, or rebuilds a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from pipeline import features as features_module
from pipeline import paths
from pipeline.models import load_models
from pipeline.psg_model import TRAINING_INFERENCE, load_trained
from pipeline.stores import ARRAY_SPECS, InversionStore, StoreMismatchError
from pipeline.student import load_student

from .conftest import copy_project, dvc, dvc_test, run_stage_in, sh, tiny_params_dict, write_params

STORE = Path("artifacts/invert/teacher.zarr")
BUCKET = "bucket"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free loopback port with an empty bucket; stopped after the module."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **_boto_credentials())
    client.create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def _boto_credentials() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def origin(s3_endpoint, tool_env, tmp_path_factory) -> Path:
    """The teammate who computes: copy of the tracked files + tiny params, ``dvc repro invert``, a remote
    ``team`` on the moto server committed to git, ``dvc push`` and ``dvc push --run-cache``."""
    root = copy_project(tmp_path_factory.mktemp("team") / "origin")
    write_params(root, tiny_params_dict())
    sh(root, tool_env, "git", "init", "-q", "-b", "main")
    sh(root, tool_env, "git", "add", "-A")
    sh(root, tool_env, "git", "commit", "-qm", "project")
    out = dvc(root, tool_env, "repro", "invert").stdout
    assert "Running stage 'invert'" in out, out[-3000:]
    dvc(root, tool_env, "remote", "add", "-d", "team", f"s3://{BUCKET}/spade")
    dvc(root, tool_env, "remote", "modify", "team", "endpointurl", s3_endpoint)
    sh(root, tool_env, "git", "add", "-A")
    sh(root, tool_env, "git", "commit", "-qm", "invert results + team remote")
    pushed = dvc(root, tool_env, "push").stdout
    assert "files pushed" in pushed, pushed
    dvc(root, tool_env, "push", "--run-cache")
    return root


def remote_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_credentials())
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def clone(origin: Path, dest: Path, env: dict) -> Path:
    sh(origin.parent, env, "git", "clone", "-q", str(origin), str(dest))
    return dest


def assert_same_store(got_ws: Path, want_ws: Path) -> None:
    got, want = InversionStore.open(got_ws / STORE), InversionStore.open(want_ws / STORE)
    assert got.settings == want.settings and got.image_ids == want.image_ids
    n = want.geometry.num_images
    a, b = got.read(0, n), want.read(0, n)
    assert set(a) == set(b) and set(b) <= set(ARRAY_SPECS)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def invert_is_persisted(root: Path) -> bool:
    outs = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["invert"]["outs"]
    return any(isinstance(o, dict) and any(v.get("persist") for v in o.values()) for o in outs)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file of the workspace outputs and of the DVC cache."""
    files = [p for d in ("artifacts", "data", ".dvc/cache") for p in sorted((root / d).rglob("*")) if p.is_file()]
    files.append(root / "dvc.lock")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
@dvc_test
def test_push_uploads_outputs_and_run_cache(origin, s3_endpoint):
    objects = remote_keys(s3_endpoint, "spade/files/md5/")
    local = [p for p in (origin / ".dvc/cache/files/md5").rglob("*") if p.is_file()]
    assert len(objects) == len(local) > 0
    runs = remote_keys(s3_endpoint, "spade/runs/")
    # one run-cache entry per cacheable stage: prepare and models, plus invert unless its output persists
    assert len(runs) == (2 if invert_is_persisted(origin) else 3), runs


@pytest.mark.slow
@dvc_test
def test_fresh_clone_pulls_invert_and_does_not_rerun_it(origin, tool_env, tmp_path):
    # the README flow: pull only the inversion store, then reproduce
    a = clone(origin, tmp_path / "a", tool_env)
    dvc(a, tool_env, "pull", "invert")
    assert (a / STORE).is_dir() and not (a / "data/prepared").exists()  # a partial pull
    out = dvc(a, tool_env, "repro", "invert").stdout
    assert "Stage 'invert' didn't change, skipping" in out, out
    assert "Running stage 'invert'" not in out
    # prepare/models are cheap and were recomputed: bit-identical, so the store's deps still match
    assert "Running stage 'prepare'" in out
    assert_same_store(a, origin)

    # with the upstream outputs too, nothing runs at all
    b = clone(origin, tmp_path / "b", tool_env)
    dvc(b, tool_env, "pull", "--with-deps", "invert")
    out = dvc(b, tool_env, "repro", "invert").stdout
    for stage in ("prepare", "models", "invert"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert "Running stage" not in out
    assert "up to date" in dvc(b, tool_env, "status", "invert").stdout
    assert_same_store(b, origin)


@pytest.mark.slow
@dvc_test
def test_run_cache_restores_stages_without_a_lock_file(origin, tool_env, tmp_path):
    # `dvc pull --run-cache` brings the run-cache entries of the remote into the local cache
    c = clone(origin, tmp_path / "c", tool_env)
    dvc(c, tool_env, "pull", "--run-cache", "invert")
    entries = sorted(p.relative_to(c / ".dvc/cache") for p in (c / ".dvc/cache/runs").rglob("*") if p.is_file())
    want = sorted(p.relative_to(origin / ".dvc/cache") for p in (origin / ".dvc/cache/runs").rglob("*") if p.is_file())
    assert entries == want and entries

    # a clone whose dvc.lock was never committed: `repro --pull` restores from the run cache
    d = clone(origin, tmp_path / "d", tool_env)
    (d / "dvc.lock").unlink()
    out = dvc(d, tool_env, "repro", "--pull", "invert").stdout
    for stage in ("prepare", "models"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out, out
        assert f"Running stage '{stage}'" not in out
    if invert_is_persisted(d):  # DVC does not run-cache stages with persistent outputs
        assert "Running stage 'invert'" in out, out
    else:
        assert "Stage 'invert' is cached - skipping run" in out, out
    assert_same_store(d, origin)


@pytest.mark.slow
@dvc_test
def test_unreachable_remote_fails_clearly_and_leaves_local_data(origin, tool_env, tmp_path):
    env = {**tool_env, "AWS_MAX_ATTEMPTS": "1"}  # fail fast instead of botocore's retries
    dead = f"http://127.0.0.1:{free_port()}"
    e = clone(origin, tmp_path / "e", env)
    dvc(e, env, "pull", "--with-deps", "invert")
    before = snapshot(e)
    dvc(e, env, "remote", "modify", "--local", "team", "endpointurl", dead)
    for args in (("push",), ("push", "--run-cache")):
        proc = dvc(e, env, *args, check=False)
        assert proc.returncode != 0, proc.stdout
        assert "Could not connect to the endpoint URL" in proc.stdout and dead in proc.stdout, proc.stdout
    assert snapshot(e) == before

    f = clone(origin, tmp_path / "f", env)
    dvc(f, env, "remote", "modify", "--local", "team", "endpointurl", dead)
    proc = dvc(f, env, "pull", "invert", check=False)
    assert proc.returncode != 0 and "failed to pull data from the cloud" in proc.stdout, proc.stdout
    assert "Could not connect to the endpoint URL" in proc.stdout
    assert not (f / STORE).exists()


# ---------------------------------------------------------------------------------- content-addressed artifacts
def test_artifacts_of_another_teacher_are_refused(tiny_trained, tmp_path, monkeypatch):
    """A teammate's store, calibration and trained model next to a different teacher (``models`` rebuilt with
    another seed): every consumer refuses them, naming both identities."""
    manifest = json.loads((tiny_trained / paths.MODELS_MANIFEST).read_text())
    old = manifest["diffusion"]["identity"]
    ws = shutil.copytree(tiny_trained, tmp_path / "ws")
    raw = tiny_params_dict(model={"seed": 1})
    write_params(ws, raw)
    run_stage_in(ws, "models", raw, monkeypatch)
    models = load_models(paths.MODELS, device="cpu", dtype="float32")
    new = models.teacher_identity
    assert new != old
    with pytest.raises(StoreMismatchError, match=f"teacher: store has '{old}', current is '{new}'"):
        run_stage_in(ws, "calibrate", raw, monkeypatch)
    with pytest.raises(ValueError, match=f"calibrated with teacher {old}, but the loaded teacher is {new}"):
        load_student(models, paths.CALIBRATE)
    with pytest.raises(ValueError, match=f"trained with teacher {old}, but the loaded teacher is {new}"):
        load_trained(models, TRAINING_INFERENCE, paths.TRAIN, paths.CALIBRATE)


def test_feature_cache_is_rebuilt_when_the_student_changes(tiny_trained, tmp_path, monkeypatch, capsys):
    ws = shutil.copytree(tiny_trained, tmp_path / "ws")
    cache = ws / paths.FEATURE_CACHE / "train.zarr"
    old = zarr.open_group(cache, mode="r")
    old_identity = old.attrs["identity"]
    old_arrays = {name: old[name][:] for name in old.array_keys()}
    run_stage_in(ws, "calibrate", tiny_params_dict(calibrate={"seed": 1}), monkeypatch)  # another student

    builds: list[str] = []
    real_build = features_module.FeatureCache.build

    def counting_build(self, *args, **kwargs):
        builds.append(self.identity)
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(features_module.FeatureCache, "build", counting_build)
    capsys.readouterr()
    run_stage_in(ws, "train", tiny_params_dict(), monkeypatch)
    assert len(builds) == 1 and builds[0] != old_identity
    assert "resuming" not in capsys.readouterr().out  # the old checkpoints belong to the old student
    new = zarr.open_group(cache, mode="r")
    assert new.attrs["identity"] == builds[0]
    assert any(not np.array_equal(new[name][:], arr) for name, arr in old_arrays.items())


def test_trained_model_of_another_calibration_is_refused(tiny_trained, tmp_path, monkeypatch):
    """``train`` records the student's identity (``config.json``: identity.student = tree hash of
    artifacts/calibrate); a trained model pulled next to another calibration is refused."""
    ws = shutil.copytree(tiny_trained, tmp_path / "ws")
    run_stage_in(ws, "calibrate", tiny_params_dict(calibrate={"seed": 1}), monkeypatch)
    models = load_models(paths.MODELS, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="student"):
        load_trained(models, TRAINING_INFERENCE, paths.TRAIN, paths.CALIBRATE)
