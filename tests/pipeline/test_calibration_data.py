"""Calibration data order (seeded block shuffling) and the block-reading dataset, on a small synthetic store."""

import numpy as np
import pytest
from PIL import Image

from pipeline.calibration_data import (
    BlockOrder,
    CalibrationDataset,
    StepBatches,
    heldout_batches,
    heldout_split,
    make_loader,
    validate_read_block,
)
from pipeline.datasets.index import IndexRecord
from pipeline.stores import InversionStore, StoreGeometry

N, SHARD, T = 10, 4, 5
GEOM = StoreGeometry(num_images=N, latent_shape=(4, 2, 2), num_tokens=T, attn_shape=(3, 3), shard_size=SHARD)


@pytest.fixture
def store_and_records(tmp_path):
    ids = [f"img{i}" for i in range(N)]
    store = InversionStore.create_or_open(tmp_path / "s.zarr", GEOM, ids, {"teacher": "t"})
    rng = np.random.default_rng(0)
    attn = rng.random((N, T, 3, 3)).astype(np.float16)
    lengths = rng.integers(2, T + 1, N)
    for shard in range(GEOM.num_shards):
        a, b = GEOM.shard_range(shard)
        n = b - a
        store.write_shard(
            shard,
            {
                "latents": np.zeros((n, 2, 4, 2, 2)),
                "attn": attn[a:b],
                "tokens": np.zeros((n, T)),
                "roles": np.zeros((n, T)),
                "triplet_index": np.zeros((n, T)),
                "lengths": lengths[a:b],
                "recon_error": np.zeros(n),
            },
        )
    records = []
    for i in range(N):
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        records.append(
            IndexRecord(
                image_id=ids[i],
                file_name=f"{i}.png",
                pan_seg_file_name="",
                height=8,
                width=8,
                segment_ids=[],
                category_ids=[],
                isthing=[],
                bboxes=[],
                relations=[],
                image_root=str(tmp_path),
            )
        )
    return str(tmp_path / "s.zarr"), records, attn, lengths


def test_read_block_validation():
    assert validate_read_block(None, 128) == 128
    assert validate_read_block(32, 128) == 32
    assert validate_read_block(256, 128) == 256
    with pytest.raises(ValueError, match="read_block=48 must divide"):
        validate_read_block(48, 128)
    with pytest.raises(ValueError, match="read_block"):
        validate_read_block(0, 128)


def test_heldout_split_is_seeded_and_disjoint():
    train, held = heldout_split(100, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(100))
    again, held2 = heldout_split(100, 0.1, seed=3)
    assert np.array_equal(held, held2) and np.array_equal(train, again)
    assert not np.array_equal(held, heldout_split(100, 0.1, seed=4)[1])
    assert len(heldout_split(5, 0.01, 0)[1]) == 1  # at least one held out when asked for
    assert len(heldout_split(5, 0.0, 0)[1]) == 0
    with pytest.raises(ValueError, match="leaves no training image"):
        heldout_split(2, 0.9, 0)


def _order(train=None, block=4, window=2, seed=0, n=22):
    return BlockOrder(n, block, np.arange(n) if train is None else train, window, seed)


def test_epoch_order_is_deterministic_and_covers_training_images_once():
    train, _ = heldout_split(22, 0.2, seed=0)
    order = _order(train)
    for epoch in range(3):
        e = order.epoch(epoch)
        assert sorted(e.tolist()) == train.tolist()  # every training image exactly once
        assert np.array_equal(e, _order(train).epoch(epoch))  # pure function of (seed, epoch)
    assert not np.array_equal(order.epoch(0), order.epoch(1))
    assert not np.array_equal(order.epoch(0), _order(train, seed=1).epoch(0))


def test_samples_are_shuffled_within_windows_of_permuted_blocks():
    order = _order(block=4, window=2)  # 22 images -> blocks of 4,4,4,4,4,2
    for epoch in range(3):
        perm, e, pos = order.block_permutation(epoch), order.epoch(epoch), 0
        for w in range(0, order.num_blocks, 2):
            members = [i for b in perm[w : w + 2] for i in range(*order.block_range(b))]
            chunk = e[pos : pos + len(members)]
            assert sorted(chunk.tolist()) == sorted(members)  # a window reads exactly its blocks
            pos += len(members)
        assert pos == 22
    # the window mixes its blocks: the first window's samples are not two sorted runs of one block each
    first = order.epoch(0)[:8] // 4
    assert len(set(first.tolist())) == 2 and not (first[:4] == first[0]).all()


def test_global_batches_stream_across_epochs_and_split_over_ranks():
    order = _order(n=10, block=4, window=2)
    stream = np.concatenate([order.epoch(0), order.epoch(1), order.epoch(2)])
    for step in range(6):
        assert np.array_equal(order.global_batch(step, 4), stream[4 * step : 4 * step + 4])
    single = list(StepBatches(order, 4, 0, 6))
    assert single == [stream[4 * s : 4 * s + 4].tolist() for s in range(6)]
    ranks = [list(StepBatches(order, 4, 0, 6, rank=r, world_size=2, micro_batch=1)) for r in range(2)]
    for s in range(6):  # each rank 2 micro-batches of 1 per step; rank 0 the first half of the global batch
        got = ranks[0][2 * s] + ranks[0][2 * s + 1] + ranks[1][2 * s] + ranks[1][2 * s + 1]
        assert got == single[s]
    assert list(StepBatches(order, 4, 3, 6)) == single[3:]  # resume at step 3 reads the same batches
    with pytest.raises(ValueError, match="not divisible"):
        StepBatches(order, 5, 0, 1, world_size=2)
    with pytest.raises(ValueError, match="micro_batch"):
        StepBatches(order, 8, 0, 1, world_size=2, micro_batch=3)


def test_dataset_reads_whole_blocks_once_per_epoch(store_and_records, monkeypatch):
    location, records, attn, lengths = store_and_records
    reads = []
    real_read = InversionStore.read

    def spy(self, start, stop, names=None):
        reads.append((start, stop))
        return real_read(self, start, stop, names=names)

    monkeypatch.setattr(InversionStore, "read", spy)
    train, _ = heldout_split(N, 0.2, seed=0)
    order = BlockOrder(N, 2, train, window=2, seed=0)  # read_block 2 divides the shard size 4
    dataset = CalibrationDataset(location, records, image_size=8, block=2, cache_blocks=2)
    steps = len(train) // 4  # one epoch of global batches of 4
    seen = []
    for batch in make_loader(dataset, StepBatches(order, 4, 0, steps), num_workers=0):
        idx = batch["index"].tolist()
        seen += idx
        assert batch["image"].shape == (4, 3, 8, 8)
        np.testing.assert_array_equal(batch["attn"].numpy(), attn[idx])
        assert batch["length"].tolist() == lengths[idx].tolist()
        assert np.allclose(batch["image"][:, 0, 0, 0].numpy(), 20 * np.array(idx) / 255)
    assert seen == order.epoch(0)[: 4 * steps].tolist()
    assert all(a % 2 == 0 and b == min(a + 2, N) for a, b in reads)  # contiguous block-aligned reads
    assert len(reads) == len(set(reads)) == len({i // 2 for i in seen})  # each block read once


def test_loader_with_workers_keeps_the_batch_order(store_and_records):
    location, records, _, _ = store_and_records
    order = BlockOrder(N, SHARD, np.arange(N), window=2, seed=1)
    dataset = CalibrationDataset(location, records, image_size=8, block=SHARD)
    plain = [b["index"].tolist() for b in make_loader(dataset, StepBatches(order, 3, 0, 5), num_workers=0)]
    workers = [b["index"].tolist() for b in make_loader(dataset, StepBatches(order, 3, 0, 5), num_workers=2)]
    assert plain == workers == [order.global_batch(s, 3).tolist() for s in range(5)]
    assert heldout_batches(np.array([7, 1, 3]), 2) == [[1, 3], [7]]
