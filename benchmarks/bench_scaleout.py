"""Benchmark: inversion throughput of ``spade invert`` with 1 vs N processes (``--nproc N``, torchrun + gloo).

In a temporary workspace with the default ``params.yaml`` (optionally overridden below), ``prepare`` and
``models`` run once; then ``spade invert --nproc N`` runs from scratch for each N and we report:

* ``wall s``: the whole command (process start-up, torchrun rendezvous, model loading, inversion, manifest);
* ``img/s``: images / wall time, and ``speedup`` against the first row;
* ``rank0 img/s``: the stage's own throughput of rank 0 (``artifacts/invert_metrics.json``: inversion only);
* ``max diff``: max abs difference of the stored latents / maps against the first row: 0 when the thread
  counts agree (``--threads 1``); otherwise the float summation order differs and BELM inversion amplifies the
  round-off in the latents to ~1e-3;
* ``ideal``: the best possible speedup given how whole shards split over ranks (rank r takes shards r, r+N, ...;
  the slowest rank bounds the run), so an unbalanced shard split is not mistaken for overhead.

Every process gets ``cores // N`` intra-op threads (``OMP_NUM_THREADS``), so each row uses the same cores. The
stores of all rows are compared. On a small CPU shared with other jobs the numbers are noisy: the load average
is printed with the table.

Usage::

    python benchmarks/bench_scaleout.py                          # default params (300 images), nproc 1 and 2
    python benchmarks/bench_scaleout.py --images 64 --shard-size 16 --nproc 1 2 4
    python benchmarks/bench_scaleout.py --threads 1                # 1 thread per process in every row
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.params import default_params_dict  # noqa: E402
from pipeline.stores import InversionStore  # noqa: E402

STORE = Path("artifacts/invert/teacher.zarr")


def run(cmd: list[str], cwd: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), "SPADE_NPROC": ""}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def ideal_speedup(num_images: int, shard_size: int, nproc: int) -> float:
    shards = [min(shard_size, num_images - s) for s in range(0, num_images, shard_size)]
    slowest = max(sum(shards[r::nproc]) for r in range(nproc))
    return num_images / slowest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=None, help="prepare.synthetic.num_train (default: params)")
    ap.add_argument("--shard-size", type=int, default=None, help="invert.shard_size (default: params)")
    ap.add_argument("--steps", type=int, default=None, help="invert.num_steps (default: params)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to share among the processes")
    ap.add_argument("--threads", type=int, default=None, help="threads per process (default: cores // nproc)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: a tmp dir)")
    args = ap.parse_args()

    raw = default_params_dict()
    raw["model"]["device"] = "cpu"
    if args.images is not None:
        raw["prepare"]["synthetic"]["num_train"] = args.images
    if args.shard_size is not None:
        raw["invert"]["shard_size"] = args.shard_size
    if args.steps is not None:
        raw["invert"]["num_steps"] = args.steps
    ws = args.workdir or Path(tempfile.mkdtemp(prefix="spade-scaleout-"))
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in ("prepare", "models"):
        run([sys.executable, "-m", f"stages.{stage}"], ws, args.cores)

    rows, reference = [], None
    for n in args.nproc:
        shutil.rmtree(ws / "artifacts/invert", ignore_errors=True)
        (ws / "artifacts/invert_metrics.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "stages.cli", "invert"] + (["--nproc", str(n)] if n > 1 else [])
        threads = args.threads or max(1, args.cores // n)
        wall = run(cmd, ws, threads)
        metrics = json.loads((ws / "artifacts/invert_metrics.json").read_text())
        store = InversionStore.open(ws / STORE)
        data = store.read(0, store.geometry.num_images, ("latents", "attn"))
        if reference is None:
            reference = data
        diff = [float(np.abs(data[k].astype(np.float64) - reference[k]).max()) for k in ("latents", "attn")]
        images = metrics["num_images"]
        ideal = ideal_speedup(images, store.geometry.shard_size, n)
        rows.append((n, threads, images, wall, images / wall, metrics["images_per_second_rank0"], ideal, diff))

    base = rows[0][4]
    load = os.getloadavg()
    inv, model = raw["invert"], raw["model"]
    print(
        f"\nspade invert scale-out: {inv['method']}, {inv['num_steps']} steps, {model['image_size']} px, "
        f"preset {model['preset']}, batch {inv['batch_size']}, shard {inv['shard_size']}; {args.cores} cores; "
        f"load avg {load[0]:.2f} {load[1]:.2f}"
    )
    head = ["nproc", "threads/proc", "images", "wall s", "img/s", "speedup", "rank0 img/s", "ideal", "max diff"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, threads, images, wall, ips, r0, ideal, diff in rows:
        speed, diffs = f"{ips / base:.2f}x", f"{diff[0]:.1e} / {diff[1]:.1e}"
        cells = [n, threads, images, f"{wall:.1f}", f"{ips:.2f}", speed, r0, f"{ideal:.2f}x", diffs]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.workdir is None:
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
