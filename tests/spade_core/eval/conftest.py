"""Shared fixtures for the SGDet evaluator tests: a random synthetic PSG-style test set."""

from __future__ import annotations

import numpy as np
import pytest


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random rectangle, sometimes with a few pixels flipped, sometimes empty."""
    m = np.zeros((h, w), dtype=bool)
    if rng.random() < 0.05:
        return m
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
    m[y0:y1, x0:x1] = True
    if rng.random() < 0.3:
        m ^= rng.random((h, w)) < 0.05
    return m


def _perturb(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
    """Copy, shifted and/or with a few flipped pixels, so IoUs spread around the thresholds."""
    r = rng.random()
    if r < 0.3:
        return m.copy()
    if r < 0.45:  # every other row dropped: IoU exactly 0.5 for a rectangle with an even row count
        out = m.copy()
        out[::2] = False
        return out
    out = np.roll(m, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    if r < 0.7:
        out = out ^ (rng.random(m.shape) < 0.03)
    return out


def synthetic_psg(seed: int, n_images: int = 20, h: int = 24, w: int = 32, num_labels: int = 3,
                  num_used_predicates: int = 6) -> tuple[list[dict], list[dict | None]]:
    """GT and predictions with overlapping masks, wrong labels, duplicate and multi-predicate GT triplets,
    tied scores, empty and missing predictions, and GT images without relations."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for idx in range(n_images):
        s = int(rng.integers(2, 7))
        masks = np.stack([_random_mask(rng, h, w) for _ in range(s)])
        labels = rng.integers(0, num_labels, s)
        r = 0 if idx % 7 == 6 else int(rng.integers(1, 9))
        rel = np.column_stack([rng.integers(0, s, r), rng.integers(0, s, r),
                               rng.integers(0, num_used_predicates, r)]).astype(np.int64)
        if r:
            extra = rel[rng.integers(0, r, 2)].copy()  # duplicates and a second predicate on a pair
            extra[1, 2] = (extra[1, 2] + 1) % num_used_predicates
            rel = np.concatenate([rel, extra])
        gts.append({"masks": masks, "labels": labels, "relations": rel})

        u = rng.random()
        if u < 0.08 or idx % 9 == 4:
            preds.append(None)
            continue
        p_copy = [_perturb(rng, m) for m in masks]
        p_rand = [_random_mask(rng, h, w) for _ in range(int(rng.integers(0, 4)))]
        pmasks = np.stack(p_copy + p_rand)
        plabels = np.concatenate([np.where(rng.random(s) < 0.8, labels, rng.integers(0, num_labels, s)),
                                  rng.integers(0, num_labels, len(p_rand))])
        t = 0 if u < 0.16 or idx % 9 == 5 else int(rng.integers(1, 120))
        rows = np.column_stack([rng.integers(0, len(pmasks), t), rng.integers(0, len(pmasks), t),
                                rng.integers(0, num_used_predicates, t)])
        if r and t:
            src = rel[rng.integers(0, len(rel), t)]
            use = rng.random(t) < 0.4
            rows[use] = src[use]  # rows pointing at the perturbed copies of GT segments
        scores = np.sort(rng.integers(0, 10, t))[::-1].astype(np.float64) / 10  # many ties
        preds.append({"masks": pmasks, "labels": plabels,
                      "triplets": np.column_stack([rows, scores]).astype(np.float64)})
    return gts, preds


@pytest.fixture
def make_synthetic():
    """Factory: ``make_synthetic(seed, **kw) -> (gt_images, pred_images)``."""
    return synthetic_psg
