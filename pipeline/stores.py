"""Sharded, resumable Zarr v3 stores for the inversion artifacts.

Layout of one store (a Zarr v3 group, local path or fsspec URL such as ``s3://bucket/x.zarr``)::

    latents        float32 [N, 2, C, h, w]   inverted noise (x_N, x_{N-1}); DDIM fills slot 1 with x_N too.
                                             Only with ``store_latents`` (invert.store_latents): no stage reads
                                             it, it lets a pulled store regenerate images exactly (BELM)
    attn           float16 [N, T, ha, wa]    teacher cross-attention per prompt token (heads+layers averaged)
    tokens         int32   [N, T]            prompt token ids (padded)
    roles          int8    [N, T]            0 other/pad, 1 subject, 2 predicate, 3 object
    triplet_index  int16   [N, T]            triplet a token belongs to, -1 for none
    lengths        int32   [N]               prompt length in tokens (start/end included)
    recon_error    float32 [N]               ||x0_rec - x0|| / ||x0|| of the inversion (NaN if not measured)
    image_ids      str     [N]
    _complete/shard-XXXXX                    empty marker objects, one per finished shard

One chunk per image, ``shard_size`` images per shard file, so a store of thousands of images is a few files
(DVC hashes/pushes few large files quickly). Writers own whole shards: rank ``r`` of ``W`` writes shards
``r, r+W, ...`` and marks each complete only after all its arrays are written, so an interrupted run resumes
by skipping complete shards, and two writers never touch one shard file. Settings that determine the content
(method, steps, model identity, image list, ...) live in the group attributes under ``settings``; opening an
existing store with other settings raises :class:`StoreMismatchError` instead of mixing the two.

Zarr writes each chunk or shard file through a temporary ``<file>.<uuid>.partial`` renamed into place; a
process killed mid-write leaves that file inside the store (a DVC output: it would be hashed, cached and
pushed). :meth:`InversionStore.create_or_open` therefore sweeps a local store's ``*.partial`` files that are
older than this process (:func:`sweep_partials`): a leftover of an earlier, killed run, never the file another
rank of this run is writing (every rank opens the store before any rank writes).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore, StoreLike

from pipeline.hashing import bytes_digest

if TYPE_CHECKING:
    from spade_core.diffusion.prompts import RelationPrompt

log = logging.getLogger(__name__)
PROCESS_START = time.time()  # this module is imported at stage start, before any rank writes a shard
PARTIAL_SUFFIX = ".partial"

ARRAY_SPECS: dict[str, tuple[str, str]] = {
    # name: (dtype, per-image shape key)
    "latents": ("float32", "latent"),
    "attn": ("float16", "attn"),
    "tokens": ("int32", "tokens"),
    "roles": ("int8", "tokens"),
    "triplet_index": ("int16", "tokens"),
    "lengths": ("int32", "scalar"),
    "recon_error": ("float32", "scalar"),
}


class StoreMismatchError(RuntimeError):
    """An existing store was written with settings other than the current ones; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class StoreIncompleteError(RuntimeError):
    """A reader asked for a store whose shards are not all complete."""


def local_path(location: StoreLike) -> str | None:
    """The folder of a local store (a path or a :class:`zarr.storage.LocalStore`); None for remote ones."""
    if isinstance(location, LocalStore):
        return str(location.root)
    if isinstance(location, str | os.PathLike) and "://" not in str(location):
        return os.fspath(location)
    if isinstance(location, str) and str(location).startswith("file://"):
        return str(location)[len("file://") :]
    return None


def sweep_partials(location: StoreLike, older_than: float | None = None) -> list[str]:
    """Remove zarr's ``*.partial`` temporaries under a local store modified before ``older_than`` (default: the
    start of this process); returns the removed paths. Remote stores (fsspec URLs) are left alone."""
    root = local_path(location)
    if root is None or not os.path.isdir(root):
        return []
    cutoff = PROCESS_START if older_than is None else older_than
    removed = []
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(PARTIAL_SUFFIX):
                continue
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                continue
    if removed:
        log.warning("removed %d partial file(s) of a killed write in %s", len(removed), root)
    return removed


@dataclass(frozen=True)
class StoreGeometry:
    num_images: int
    latent_shape: tuple[int, int, int]  # C, h, w
    num_tokens: int
    attn_shape: tuple[int, int]  # ha, wa
    shard_size: int
    store_latents: bool = True  # False: no ``latents`` array

    @property
    def arrays(self) -> tuple[str, ...]:
        """The names of the per-image arrays of a store of this geometry (:data:`ARRAY_SPECS` order)."""
        return tuple(n for n in ARRAY_SPECS if self.store_latents or n != "latents")

    @property
    def num_shards(self) -> int:
        return (self.num_images + self.shard_size - 1) // self.shard_size

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_images)

    def per_image_shape(self, kind: str) -> tuple[int, ...]:
        return {
            "latent": (2, *self.latent_shape),
            "attn": (self.num_tokens, *self.attn_shape),
            "tokens": (self.num_tokens,),
            "scalar": (),
        }[kind]


def _diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: store has {stored.get(k)!r}, current is {current.get(k)!r}"
        for k in keys
        if stored.get(k) != current.get(k)
    ]


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, sort_keys=True))


class InversionStore:
    """A sharded Zarr v3 group holding per-image inversion results (see module docstring)."""

    def __init__(self, group: zarr.Group, geometry: StoreGeometry, location: str) -> None:
        self.group = group
        self.geometry = geometry
        self.location = location

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create_or_open(
        cls,
        location: StoreLike,
        geometry: StoreGeometry,
        image_ids: list[str],
        settings: dict[str, Any],
        *,
        replace_mismatched: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> InversionStore:
        """Open the store at ``location`` for writing, creating it if absent (rank 0 only).

        An existing store with identical ``settings``, geometry and image ids is reopened (resume: complete
        shards are kept). Stores of other settings are never appended to: a *finished* one (manifest written,
        so ``dvc repro`` has cached it) is replaced; an *unfinished* one raises :class:`StoreMismatchError`
        listing the differences, unless ``replace_mismatched``.
        """
        if len(image_ids) != geometry.num_images:
            raise ValueError(f"{len(image_ids)} image ids for a store of {geometry.num_images} images")
        ids_hash = bytes_digest("\n".join(image_ids).encode())
        full = _jsonable({**settings, "geometry": geometry.__dict__, "image_ids_hash": ids_hash})
        opts = {"storage_options": storage_options} if storage_options else {}
        sweep_partials(location)
        try:
            group = zarr.open_group(location, mode="r+", **opts)
            existing = dict(group.attrs).get("settings")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            group, existing = None, None
        if group is not None and existing is not None:
            problems = _diff(existing, full)
            if not problems:
                return cls(group, geometry, str(location))
            finished = "manifest" in dict(group.attrs)
            if not (finished or replace_mismatched):
                raise StoreMismatchError(
                    f"{location}: inversion store holds an unfinished run with other settings; refusing to mix "
                    "them:\n  " + "\n  ".join(problems),
                    hint="delete the store, or rerun with invert.on_mismatch=replace to discard the unfinished "
                    "shards",
                )
            log.warning(
                "replacing %s store %s (%s)", "finished" if finished else "unfinished", location, "; ".join(problems)
            )
        group = zarr.open_group(location, mode="w", **opts)
        g = geometry
        for name in g.arrays:
            dtype, kind = ARRAY_SPECS[name]
            per = g.per_image_shape(kind)
            fill = float("nan") if name == "recon_error" else 0
            group.create_array(
                name,
                shape=(g.num_images, *per),
                chunks=(1, *per),
                shards=(g.shard_size, *per),
                dtype=dtype,
                fill_value=fill,
            )
        ids = group.create_array("image_ids", shape=(g.num_images,), chunks=(g.shard_size,), dtype=str, fill_value="")
        ids[:] = np.asarray(image_ids, dtype=object)
        group.create_group("_complete")
        group.attrs["settings"] = full
        return cls(group, geometry, str(location))

    @classmethod
    def open(
        cls,
        location: StoreLike,
        *,
        expected: dict[str, Any] | None = None,
        require_complete: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> InversionStore:
        """Open a store for reading; check ``expected`` settings (a subset) and completeness."""
        opts = {"storage_options": storage_options} if storage_options else {}
        try:
            group = zarr.open_group(location, mode="r", **opts)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(f"no inversion store at {location} (run the `invert` stage)") from None
        settings = dict(group.attrs).get("settings")
        if settings is None:
            raise StoreIncompleteError(f"{location} has no settings attribute: not an inversion store")
        geometry = StoreGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings["geometry"].items()})
        store = cls(group, geometry, str(location))
        if expected:
            problems = _diff({k: settings.get(k) for k in expected}, _jsonable(expected))
            if problems:
                raise StoreMismatchError(
                    f"{location}: inversion store does not match the current parameters/models:\n  "
                    + "\n  ".join(problems),
                    hint="rerun the `invert` stage (dvc repro invert) or pull the matching artifacts",
                )
        if require_complete:
            missing = [s for s in range(geometry.num_shards) if not store.is_complete(s)]
            if missing:
                raise StoreIncompleteError(
                    f"inversion store {location} is incomplete: shards {missing[:10]} of "
                    f"{geometry.num_shards} not finished (rerun `invert` to resume)"
                )
        return store

    # ------------------------------------------------------------------ shards
    def is_complete(self, shard: int) -> bool:
        return f"shard-{shard:05d}" in self.group["_complete"]

    def shards_for_rank(self, rank: int, world_size: int) -> list[int]:
        return list(range(rank, self.geometry.num_shards, world_size))

    def write_shard(self, shard: int, arrays: dict[str, np.ndarray]) -> None:
        """Write all arrays of one whole shard, then mark it complete (the marker is written last)."""
        start, stop = self.geometry.shard_range(shard)
        for name in self.geometry.arrays:
            if name not in arrays:
                raise KeyError(f"shard {shard}: array {name!r} missing")
            block = np.asarray(arrays[name])
            if block.shape[0] != stop - start:
                raise ValueError(f"shard {shard}: {name} has {block.shape[0]} rows, expected {stop - start}")
            self.group[name][start:stop] = block.astype(ARRAY_SPECS[name][0], copy=False)
        self.group["_complete"].create_group(f"shard-{shard:05d}")

    # ------------------------------------------------------------------ reading
    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.group.attrs)["settings"]

    @property
    def image_ids(self) -> list[str]:
        return [str(x) for x in self.group["image_ids"][:]]

    def read(self, start: int, stop: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Contiguous block read of ``names`` (default: every array of the store; fast in every layout, prefer
        shard-aligned blocks)."""
        return {name: self.group[name][start:stop] for name in (self.geometry.arrays if names is None else names)}

    def iter_shard_blocks(self) -> Iterator[tuple[int, int]]:
        for s in range(self.geometry.num_shards):
            yield self.geometry.shard_range(s)

    def write_manifest(self, extra: dict[str, Any] | None = None) -> None:
        """Rank 0, after every shard is complete: record the finished state in the group attributes."""
        missing = [s for s in range(self.geometry.num_shards) if not self.is_complete(s)]
        if missing:
            raise StoreIncompleteError(f"cannot write manifest of {self.location}: shards {missing} missing")
        self.group.attrs["manifest"] = _jsonable({"num_shards": self.geometry.num_shards, **(extra or {})})


def prompt_rows(prompts: Sequence[RelationPrompt]) -> dict[str, np.ndarray]:
    """The stored rows of a batch of relation prompts: ``tokens``, ``roles``, ``triplet_index``, ``lengths``."""
    return {
        "tokens": torch.stack([q.token_ids for q in prompts]).numpy(),
        "roles": torch.stack([q.role for q in prompts]).numpy(),
        "triplet_index": torch.stack([q.triplet_index for q in prompts]).numpy(),
        "lengths": np.array([q.length for q in prompts]),
    }


class ShardWriter:
    """Collects the rows of one shard batch by batch (any subset of the store's arrays per call), then
    writes them as one block with :meth:`InversionStore.write_shard` (which marks the shard complete)."""

    def __init__(self, store: InversionStore, shard: int) -> None:
        self.store, self.shard = store, shard
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in store.geometry.arrays}

    def add(self, rows: dict[str, np.ndarray]) -> None:
        for name, block in rows.items():
            if name not in self._parts:
                raise KeyError(f"shard {self.shard}: {name!r} is not a store array")
            self._parts[name].append(block)

    def write(self) -> None:
        self.store.write_shard(self.shard, {name: np.concatenate(blocks) for name, blocks in self._parts.items()})
