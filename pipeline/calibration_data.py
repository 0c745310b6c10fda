"""Streaming calibration batches from the inversion store and the images, in shard-aligned blocks.

Sharded Zarr stores are slow for random single-image reads (each read decodes a shard index and seeks inside
one large file) but fast for contiguous reads. So the data order is built from contiguous *blocks*:

1. the image range ``[0, N)`` of the store is cut into blocks of ``block`` images (``calibrate.read_block``,
   default the store's shard size; it must divide the shard size or be a multiple of it, so that blocks never
   straddle a shard boundary unnecessarily). The last block may be shorter;
2. a seeded ``heldout_fraction`` of the images is held out (for the before/after metrics) and never trained on;
3. every epoch, the blocks are permuted with a generator seeded by ``(seed, epoch)``; the permuted list is cut
   into windows of ``shuffle_window`` consecutive blocks, and the training images of each window are shuffled
   together (same generator). An epoch visits every training image exactly once, and batches mix images of
   ``shuffle_window`` different blocks (up to twice that where a batch crosses a window boundary);
4. epochs are concatenated into one stream; optimizer step ``s`` (0-based) takes the global batch at stream
   positions ``[s B, (s + 1) B)``, and rank ``r`` of ``W`` the slice ``[r B/W, (r + 1) B/W)`` of it, cut into
   micro-batches.

The order is a pure function of ``(seed, epoch)`` and the batch of step ``s`` a pure function of ``(seed, s)``,
so a run resumed at step ``s`` reads exactly the batches an uninterrupted run would have read.

Readers (:class:`CalibrationDataset`, one copy per DataLoader worker) read a whole block with one contiguous
``store.read(start, stop)`` and keep the last ``shuffle_window`` blocks in a small LRU cache, so with
``num_workers <= 1`` every block is read once per epoch; with ``W`` workers (batches go round-robin to the
workers) a block may be read up to ``W`` times. Memory per worker: ``shuffle_window`` blocks of teacher maps
(``block * T * ha * wa`` float16 each: 5 MB for the default 128 x 77 x 16 x 16).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.datasets.index import IndexRecord
from pipeline.images import load_image_tensor
from pipeline.stores import InversionStore

HELDOUT_SALT = 0x5EED_4E1D  # separates the held-out choice from the epoch permutations of the same seed


def validate_read_block(read_block: int | None, shard_size: int) -> int:
    """The block size in images: ``read_block`` (must divide ``shard_size`` or be a multiple), else ``shard_size``."""
    if read_block is None:
        return shard_size
    if not isinstance(read_block, int) or read_block <= 0:
        raise ValueError(f"calibrate.read_block: expected a positive int or null, got {read_block!r}")
    if shard_size % read_block and read_block % shard_size:
        raise ValueError(
            f"calibrate.read_block={read_block} must divide the store's shard size {shard_size} or be a multiple "
            "of it (blocks are read contiguously and should not straddle shard boundaries)"
        )
    return read_block


def heldout_split(num_images: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(num_images)`` into (train, heldout), both sorted int64 arrays.

    ``round(fraction * N)`` images are held out, at least one when ``fraction > 0``; at least one image stays
    for training.
    """
    if num_images < 1:
        raise ValueError(f"num_images: expected >= 1, got {num_images}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"calibrate.heldout_fraction: expected in [0, 1), got {fraction}")
    n_held = round(fraction * num_images)
    if fraction > 0:
        n_held = max(n_held, 1)
    if n_held >= num_images:
        raise ValueError(f"calibrate.heldout_fraction={fraction} leaves no training image out of {num_images}")
    rng = np.random.default_rng([seed, HELDOUT_SALT])
    held = np.sort(rng.choice(num_images, size=n_held, replace=False)).astype(np.int64)
    train = np.setdiff1d(np.arange(num_images, dtype=np.int64), held)
    return train, held


@dataclass
class BlockOrder:
    """The seeded block-shuffled order of the training images (see the module docstring).

    Args:
        num_images: N, the store's image count.
        block: images per block (see :func:`validate_read_block`).
        train_indices: the store indices trained on (others are skipped).
        window: blocks shuffled together (``calibrate.shuffle_window``).
        seed: ``calibrate.seed``.
    """

    num_images: int
    block: int
    train_indices: np.ndarray
    window: int
    seed: int
    _epochs: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.block <= 0 or self.window <= 0:
            raise ValueError(f"block and window must be positive, got {self.block}, {self.window}")
        self.train_indices = np.sort(np.asarray(self.train_indices, dtype=np.int64))
        if len(self.train_indices) == 0:
            raise ValueError("train_indices: no training image")
        if self.train_indices[0] < 0 or self.train_indices[-1] >= self.num_images:
            raise ValueError(f"train_indices: out of range [0, {self.num_images})")
        blocks = self.train_indices // self.block
        self._by_block = [self.train_indices[blocks == b] for b in range(self.num_blocks)]

    @property
    def num_blocks(self) -> int:
        return (self.num_images + self.block - 1) // self.block

    @property
    def epoch_length(self) -> int:
        return len(self.train_indices)

    def block_range(self, b: int) -> tuple[int, int]:
        return b * self.block, min((b + 1) * self.block, self.num_images)

    def block_permutation(self, epoch: int) -> np.ndarray:
        """[num_blocks] the order the blocks are visited in ``epoch``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def epoch(self, epoch: int) -> np.ndarray:
        """[epoch_length] training store indices in the order of ``epoch`` (each exactly once)."""
        if epoch < 0:
            raise ValueError(f"epoch: expected >= 0, got {epoch}")
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.num_blocks)
            parts = []
            for w in range(0, self.num_blocks, self.window):
                members = np.concatenate([self._by_block[b] for b in perm[w : w + self.window]])
                parts.append(rng.permutation(members))
            if len(self._epochs) > 4:
                self._epochs.clear()
            self._epochs[epoch] = np.concatenate(parts)
        return self._epochs[epoch]

    def positions(self, start: int, stop: int) -> np.ndarray:
        """Store indices at positions ``[start, stop)`` of the endless stream of concatenated epochs."""
        if not 0 <= start <= stop:
            raise ValueError(f"positions: expected 0 <= start <= stop, got {start}, {stop}")
        n = self.epoch_length
        out, pos = [], start
        while pos < stop:
            e, off = divmod(pos, n)
            take = min(stop - pos, n - off)
            out.append(self.epoch(e)[off : off + take])
            pos += take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        """[batch_size] store indices of optimizer step ``step`` (0-based)."""
        return self.positions(step * batch_size, (step + 1) * batch_size)


class StepBatches(Sampler[list[int]]):
    """DataLoader batch sampler: this rank's micro-batches for optimizer steps ``[start_step, stop_step)``.

    Per step it yields ``accumulation`` lists of ``micro_batch`` store indices (rank ``rank``'s slice of the
    step's global batch, in order), so ``micro_batch * accumulation * world_size == batch_size``.
    """

    def __init__(
        self,
        order: BlockOrder,
        batch_size: int,
        start_step: int,
        stop_step: int,
        rank: int = 0,
        world_size: int = 1,
        micro_batch: int | None = None,
    ):
        if batch_size % world_size:
            raise ValueError(f"calibrate.batch_size={batch_size} is not divisible by the {world_size} processes")
        per_rank = batch_size // world_size
        micro = per_rank if micro_batch is None else micro_batch
        if per_rank % micro:
            raise ValueError(f"calibrate.micro_batch={micro} does not divide the per-rank batch {per_rank}")
        self.order, self.batch_size, self.rank, self.per_rank, self.micro = order, batch_size, rank, per_rank, micro
        self.start_step, self.stop_step = start_step, stop_step

    @property
    def accumulation(self) -> int:
        return self.per_rank // self.micro

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.stop_step):
            mine = self.order.global_batch(step, self.batch_size)[self.rank * self.per_rank :][: self.per_rank]
            for m in range(0, self.per_rank, self.micro):
                yield [int(i) for i in mine[m : m + self.micro]]


class CalibrationDataset(Dataset):
    """Item ``i`` (a store index): ``image`` [3,S,S] float32 in [0,1], ``attn`` [T,ha,wa] float16 (the teacher
    maps), ``length`` int64 (prompt tokens), ``index`` int64.

    ``records[i]`` is the image of store row ``i`` (``pipeline.inversion.calibration_records()`` order). The store is
    opened lazily in each process; blocks are read whole and cached (LRU, ``cache_blocks`` entries).
    """

    def __init__(
        self, store_location: str, records: Sequence[IndexRecord], image_size: int, block: int, cache_blocks: int = 2
    ):
        if cache_blocks < 1:
            raise ValueError(f"cache_blocks: expected >= 1, got {cache_blocks}")
        self.store_location, self.records = str(store_location), list(records)
        self.image_size, self.block, self.cache_blocks = image_size, block, cache_blocks
        self._store: InversionStore | None = None
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:  # workers start with an empty cache and open their own store
        return {**self.__dict__, "_store": None, "_cache": OrderedDict()}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def store(self) -> InversionStore:
        if self._store is None:
            self._store = InversionStore.open(self.store_location, require_complete=False)
            if self._store.geometry.num_images != len(self.records):
                raise ValueError(
                    f"records: {len(self.records)} images for a store of {self._store.geometry.num_images}"
                )
        return self._store

    def read_block(self, b: int) -> dict[str, np.ndarray]:
        """The teacher maps and lengths of block ``b`` (one contiguous read, LRU-cached)."""
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        n = self.store.geometry.num_images
        data = self.store.read(b * self.block, min((b + 1) * self.block, n), names=("attn", "lengths"))
        self._cache[b] = data
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b, off = divmod(int(i), self.block)
        data = self.read_block(b)
        return {
            "image": load_image_tensor(self.records[i], self.image_size),
            "attn": torch.from_numpy(np.ascontiguousarray(data["attn"][off])),
            "length": torch.tensor(int(data["lengths"][off]), dtype=torch.int64),
            "index": torch.tensor(int(i), dtype=torch.int64),
        }


def make_loader(
    dataset: CalibrationDataset,
    batches: Sampler[list[int]] | Sequence[list[int]],
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``batches`` (lists of store indices); the batch order is kept whatever the workers."""
    return DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False
    )


def heldout_batches(heldout: np.ndarray, batch_size: int) -> list[list[int]]:
    """Sorted held-out indices cut into batches (contiguous in the store, so reads stay block-aligned)."""
    idx = [int(i) for i in np.sort(heldout)]
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
