"""Speed of ``spade_core.eval.evaluate`` against straightforward SGDet evaluators, on seeded synthetic data.

    python benchmarks/bench_sgdet.py [--images 100 --height 480 --width 640 --triplets 100]

Baselines (``benchmarks/_sgdet_baseline.py``): ``per-pair`` computes both mask IoUs with numpy for every
(prediction row, GT triplet) pair; ``openpsg-style`` first keeps the pairs whose labels and predicate agree,
then computes one numpy IoU per candidate (OpenPSG's structure). The per-pair baseline is slow, so it is timed
on the first ``--baseline-images`` images and its time per image is scaled (the table says so). Every method's
numbers are checked against ``evaluate`` on the same images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sgdet_baseline import evaluate_openpsg_style, evaluate_per_pair

from spade_core.eval import evaluate

NUM_PREDICATES, NUM_CLASSES, KS = 56, 133, (20, 50, 100)


def long_tail(rng: np.random.Generator, n_classes: int, size: int) -> np.ndarray:
    """Class ids with frequency proportional to 1 / (id + 1), like PSG's person-heavy labels and
    on/beside-heavy predicates."""
    p = 1.0 / np.arange(1, n_classes + 1)
    return rng.choice(n_classes, size=size, p=p / p.sum())


def make_image(rng: np.random.Generator, h: int, w: int, segments: int, relations: int, triplets: int):
    """One GT image (panoptic Voronoi segments) and a prediction of perturbed copies plus random extras."""
    cell = 8
    gh, gw = -(-h // cell), -(-w // cell)
    seeds = rng.random((segments, 2)) * [gh, gw]
    yy, xx = np.mgrid[0:gh, 0:gw]
    ids = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    ids = np.repeat(np.repeat(ids, cell, 0), cell, 1)[:h, :w]
    gt_masks = ids[None] == np.arange(segments)[:, None, None]
    gt_labels = long_tail(rng, NUM_CLASSES, segments)
    rel = np.column_stack([rng.integers(0, segments, relations), rng.integers(0, segments, relations),
                           long_tail(rng, NUM_PREDICATES, relations)])

    shifts = rng.integers(-24, 25, (segments, 2))
    copies = [np.roll(m, tuple(s), axis=(0, 1)) for m, s in zip(gt_masks, shifts)]
    extras = []
    for _ in range(4):
        m = np.zeros((h, w), dtype=bool)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        m[y0 : y0 + rng.integers(8, h // 2), x0 : x0 + rng.integers(8, w // 2)] = True
        extras.append(m)
    p_masks = np.stack(copies + extras)
    p_labels = np.concatenate([np.where(rng.random(segments) < 0.8, gt_labels,
                                        long_tail(rng, NUM_CLASSES, segments)),
                               long_tail(rng, NUM_CLASSES, len(extras))])
    n_p = len(p_masks)
    rows = np.column_stack([rng.integers(0, n_p, triplets), rng.integers(0, n_p, triplets),
                            long_tail(rng, NUM_PREDICATES, triplets)])
    from_gt = rng.random(triplets) < 0.3
    src = rel[rng.integers(0, relations, triplets)]
    src[:, 2] = np.where(rng.random(triplets) < 0.7, src[:, 2], long_tail(rng, NUM_PREDICATES, triplets))
    rows[from_gt] = src[from_gt]
    scores = np.sort(rng.random(triplets))[::-1]
    gt = {"masks": gt_masks, "labels": gt_labels, "relations": rel}
    pred = {"masks": p_masks, "labels": p_labels, "triplets": np.column_stack([rows, scores])}
    return gt, pred


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def same(a: dict, b: dict) -> bool:
    keys = [f"{m}@{k}" for k in KS for m in ("R", "mR")] + ["num_images"]
    return all(abs(a[k] - b[k]) <= 1e-12 for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--triplets", type=int, default=100)
    ap.add_argument("--segments", type=int, default=15, help="GT segments per image (prediction: +4)")
    ap.add_argument("--relations", type=int, default=20, help="GT relations per image")
    ap.add_argument("--baseline-images", type=int, default=10, help="images timed for the per-pair baseline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    data = [make_image(rng, args.height, args.width, args.segments, args.relations, args.triplets)
            for _ in range(args.images)]
    gts, preds = [d[0] for d in data], [d[1] for d in data]
    nb = min(args.baseline_images, args.images)

    for fn in (evaluate, evaluate_openpsg_style, evaluate_per_pair):  # warm-up on one image
        fn(gts[:1], preds[:1], NUM_PREDICATES, KS)
    fast, t_fast = timed(evaluate, gts, preds, NUM_PREDICATES, KS)
    fast_sub = evaluate(gts[:nb], preds[:nb], NUM_PREDICATES, KS)
    psg, t_psg = timed(evaluate_openpsg_style, gts, preds, NUM_PREDICATES, KS)
    pair, t_pair = timed(evaluate_per_pair, gts[:nb], preds[:nb], NUM_PREDICATES, KS)

    print(f"{args.images} images {args.height}x{args.width}, {args.segments} GT segments, "
          f"{args.relations} GT relations, {args.triplets} predicted triplets per image; "
          f"R@20/50/100 = {fast['R@20']:.4f}/{fast['R@50']:.4f}/{fast['R@100']:.4f}, "
          f"mR@100 = {fast['mR@100']:.4f}")
    print(f"{'method':<28}{'images':>8}{'seconds':>10}{'images/s':>11}{'speedup':>10}  identical")
    per_img_fast = t_fast / args.images
    table = [("evaluate (bit-packed)", args.images, t_fast, True),
             ("openpsg-style baseline", args.images, t_psg, same(psg, fast)),
             (f"per-pair baseline (on {nb})", nb, t_pair, same(pair, fast_sub))]
    for name, n, t, ok in table:
        print(f"{name:<28}{n:>8}{t:>10.3f}{n / t:>11.1f}{t / n / per_img_fast:>9.1f}x  {ok}")
    if nb < args.images:
        print(f"per-pair baseline timed on the first {nb} images; scaled to {args.images} images: "
              f"{t_pair / nb * args.images:.1f} s")
    if not all(row[3] for row in table):
        raise SystemExit("baseline numbers differ from evaluate")


if __name__ == "__main__":
    main()
