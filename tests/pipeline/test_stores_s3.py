"""Inversion stores on object storage: ``s3://`` URLs (zarr's FsspecStore over s3fs) on a loopback moto server."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest

from pipeline.stores import ARRAY_SPECS, InversionStore, StoreIncompleteError, StoreMismatchError

from .conftest import GEOM, IDS, SETTINGS, shard_arrays

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "bucket"


def s3_client(endpoint: str):
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


@pytest.fixture(scope="module")
def endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    s3_client(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def opts(endpoint) -> dict:
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}


@pytest.fixture
def location(request) -> str:
    return f"s3://{BUCKET}/{request.node.name}.zarr"


def test_write_reopen_and_read_back_on_s3(location, opts, endpoint):
    store = InversionStore.create_or_open(location, GEOM, IDS, SETTINGS, storage_options=opts)
    written = {s: shard_arrays(s) for s in range(GEOM.num_shards)}
    store.write_shard(0, written[0])
    store.write_shard(2, written[2])
    with pytest.raises(StoreIncompleteError, match=r"shards \[1\]"):
        InversionStore.open(location, storage_options=opts)
    # resume: reopening with the same settings keeps the complete shards (markers are objects on S3)
    again = InversionStore.create_or_open(location, GEOM, IDS, SETTINGS, storage_options=opts)
    assert [again.is_complete(s) for s in range(3)] == [True, False, True]
    again.write_shard(1, written[1])
    again.write_manifest({"note": "s3"})

    back = InversionStore.open(location, expected={"teacher": "abc"}, storage_options=opts)
    assert back.image_ids == IDS and back.geometry == GEOM
    data = back.read(0, GEOM.num_images)
    for name, (dtype, _) in ARRAY_SPECS.items():
        want = np.concatenate([written[s][name] for s in range(3)]).astype(dtype)
        np.testing.assert_array_equal(data[name], want, err_msg=name)
    # really on the server: one shard file per array and shard, plus the markers
    prefix = location[len(f"s3://{BUCKET}/") :]
    keys = {o["Key"] for o in s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert {f"{prefix}/_complete/shard-{s:05d}/zarr.json" for s in range(3)} <= keys
    assert f"{prefix}/latents/c/2/0/0/0/0" in keys


def test_credentials_from_environment(location, opts, endpoint, monkeypatch):
    InversionStore.create_or_open(location, GEOM, IDS, SETTINGS, storage_options=opts)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    store = InversionStore.open(location, require_complete=False)  # no storage_options: env only
    assert store.settings["teacher"] == "abc" and not store.is_complete(0)


def test_mismatch_refused_and_finished_store_replaced_on_s3(location, opts):
    store = InversionStore.create_or_open(location, GEOM, IDS, SETTINGS, storage_options=opts)
    store.write_shard(0, shard_arrays(0))
    other = {**SETTINGS, "teacher": "xyz"}
    with pytest.raises(StoreMismatchError, match="teacher: store has 'abc', current is 'xyz'"):
        InversionStore.create_or_open(location, GEOM, IDS, other, storage_options=opts)
    for s in (1, 2):
        store.write_shard(s, shard_arrays(s))
    store.write_manifest()
    with pytest.raises(StoreMismatchError, match="teacher: store has 'abc', current is 'xyz'"):
        InversionStore.open(location, expected={"teacher": "xyz"}, storage_options=opts)
    # a finished store of other settings is replaced: no stale shard or marker survives on the bucket
    fresh = InversionStore.create_or_open(location, GEOM, IDS, other, storage_options=opts)
    assert not any(fresh.is_complete(s) for s in range(3))
    assert np.isnan(fresh.read(0, 5, ("recon_error",))["recon_error"]).all()


def test_missing_s3_store_is_a_clear_error(opts):
    with pytest.raises(FileNotFoundError, match="no inversion store at s3://bucket/nothing.zarr"):
        InversionStore.open(f"s3://{BUCKET}/nothing.zarr", storage_options=opts)
