"""Single-process by default; the same stage code runs under ``torchrun`` (one process per rank).

Ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). CPU runs use the gloo
backend, CUDA runs NCCL. The global batch size is a parameter; the per-rank micro-batch and gradient
accumulation derive from it so that results do not depend on the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun set up (no-op for a plain ``python`` run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        torch_dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        torch_dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def split_global_batch(global_batch: int, world_size: int, max_micro_batch: int | None = None) -> tuple[int, int]:
    """Return ``(micro_batch, accumulation)`` with ``micro_batch * accumulation * world_size == global_batch``.

    >>> split_global_batch(8, 2)
    (4, 1)
    >>> split_global_batch(8, 2, max_micro_batch=2)
    (2, 2)
    """
    if global_batch % world_size:
        raise ValueError(f"global batch size {global_batch} is not divisible by the {world_size} processes")
    per_rank = global_batch // world_size
    micro = per_rank if max_micro_batch is None else max(1, min(per_rank, max_micro_batch))
    while per_rank % micro:
        micro -= 1
    return micro, per_rank // micro


def allreduce_grads(params: list[torch.nn.Parameter], ctx: DistContext, bucket: int = 1 << 24) -> None:
    """Sum the gradients of ``params`` over ranks, in flat buckets (the loss is already scaled to the global
    batch, so the sum is the global-batch gradient). A parameter without a gradient on this rank contributes
    zeros, so every rank reduces the same buckets."""
    if not ctx.enabled:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    start = 0
    while start < len(grads):
        group, n = [], 0
        while start < len(grads) and (not group or n + grads[start].numel() <= bucket):
            group.append(grads[start])
            n += grads[start].numel()
            start += 1
        flat = torch.cat([g.reshape(-1) for g in group])
        torch_dist.all_reduce(flat)
        for g, v in zip(group, flat.split([g.numel() for g in group])):
            g.copy_(v.view_as(g))


def reduce_sum(values: dict[str, float], ctx: DistContext, device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over ranks (like detectron2's ``comm.reduce_dict``, summing): every rank gets the
    totals. The values travel as one float64 tensor on ``device`` (NCCL reduces CUDA tensors only, gloo CPU
    ones), so the same call works on every backend. No-op for a single process."""
    if not ctx.enabled or not values:
        return dict(values)
    if device.type != "cuda":
        device = torch.device("cpu")
    flat = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    torch_dist.all_reduce(flat)
    return dict(zip(values, flat.tolist()))
