"""Shared data of the inversion-store tests (local and on S3)."""

from __future__ import annotations

import numpy as np

from pipeline.stores import StoreGeometry

GEOM = StoreGeometry(num_images=5, latent_shape=(4, 8, 8), num_tokens=6, attn_shape=(8, 8), shard_size=2)
IDS = [f"img{i}" for i in range(5)]
SETTINGS = {"method": "belm", "num_steps": 10, "teacher": "abc"}


def shard_arrays(shard: int, seed: int = 0, geometry: StoreGeometry = GEOM) -> dict[str, np.ndarray]:
    """Random arrays of one shard of ``geometry`` (every array of ``ARRAY_SPECS``), seeded by (seed, shard)."""
    start, stop = geometry.shard_range(shard)
    n = stop - start
    rng = np.random.default_rng([seed, shard])
    return {
        "latents": rng.standard_normal((n, 2, 4, 8, 8)).astype(np.float32),
        "attn": rng.random((n, 6, 8, 8)).astype(np.float16),
        "tokens": rng.integers(0, 100, (n, 6)),
        "roles": rng.integers(0, 4, (n, 6)),
        "triplet_index": rng.integers(-1, 2, (n, 6)),
        "lengths": rng.integers(2, 6, (n,)),
        "recon_error": rng.random(n),
    }
