"""The distributed path of the training engine under torchrun, also with a single process (gpu_check.sh).

``pipeline.dist`` only talks to the process group when there are >= 2 ranks, so a one-GPU machine never
exercises NCCL through a stage. This check joins the group torchrun set up (NCCL on CUDA, gloo on CPU), runs the
engine's reductions over it as they run with several ranks (``allreduce_grads`` in buckets, ``reduce_sum`` on the
device NCCL needs), and compares with what they must give: every rank's gradients summed (with world size W
and the same gradients on every rank, W times the local ones) and the dict of floats summed.

    python -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/ddp_check.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.dist import allreduce_grads, init_distributed, reduce_sum, shutdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if "WORLD_SIZE" not in os.environ:
        raise SystemExit("run under torchrun: python -m torch.distributed.run --standalone --nproc_per_node=N ...")
    device = torch.device(args.device)
    world = int(os.environ["WORLD_SIZE"])
    if world == 1:  # init_distributed leaves a single process alone: join the group here
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    ctx = init_distributed(device)
    ctx = replace(ctx, rank=torch_dist.get_rank(), world_size=max(2, world))  # take the multi-rank code path
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    torch.manual_seed(0)  # the same model and batch on every rank
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).to(device)
    model(torch.randn(32, 64, device=device)).square().mean().backward()
    local = [p.grad.clone() for p in model.parameters()]
    allreduce_grads(list(model.parameters()), ctx, bucket=4096)  # small buckets: several all_reduce calls
    grads_ok = all(torch.allclose(p.grad, world * g, rtol=1e-5, atol=1e-6) for p, g in zip(model.parameters(), local))
    sums = reduce_sum({"loss": 1.5, "images": 8.0}, ctx, device)
    sums_ok = sums == {"loss": 1.5 * world, "images": 8.0 * world}
    backend = torch_dist.get_backend()
    print(f"rank {ctx.rank}/{world} backend {backend} device {device}: allreduce_grads "
          f"{'ok' if grads_ok else 'WRONG'}, reduce_sum {'ok' if sums_ok else f'WRONG {sums}'}")
    shutdown(ctx)
    return 0 if grads_ok and sums_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
