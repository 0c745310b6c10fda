"""Benchmark: batched inversion + teacher-map capture vs. the standard per-image diffusers approach.

One run prints four tables:

1. images/s for inversion + final-step cross-attention maps:
   * ``ours``: ``spade_core.diffusion.teacher_maps`` (batch B; BELM: N UNet calls, maps recorded during
     inversion; DDIM: N + 1; explicit softmax only in the one recorded call, SDPA/xformers elsewhere);
   * ``baseline``: the usual prompt-to-prompt / DAAM recipe, one image at a time: a ``DDIMInverseScheduler``
     loop, then a ``DDIMScheduler`` regeneration pass, with an attention-storing processor (diffusers'
     ``AttnProcessor`` maths: ``get_attention_scores`` + ``bmm``) active on every cross-attention call of every
     step; the maps of the last regeneration call are kept. Also run batched, to separate the factors.
2. UNet calls per image.
3. round-trip error ``||x0_rec - x0|| / ||x0||`` of DDIM and BELM, fp32 and fp64 (and the UNet dtype with fp32
   latents when it is not fp32).
4. peak memory of each variant (CPU: peak-RSS growth via /proc/self/clear_refs + VmHWM; CUDA: max allocated).

Usage::

    python benchmarks/bench_invert.py                       # CPU, tiny UNet, batch 8, 10 steps
    python benchmarks/bench_invert.py --device cuda --dtype fp16 --unet sd15 --images 32

On a CPU shared with other jobs, pass ``--threads 1``: spinning OpenMP threads of an oversubscribed machine
slow the batch-1 baseline far more than the batched runs, which inflates the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import PeakMemory, sync

from spade_core.diffusion import (
    SD_SCHEDULER_CONFIG,
    AttentionCapture,
    fast_attention_backend,
    invert,
    reconstruction_error,
    sample,
    teacher_maps,
)
from spade_core.diffusion.models import TINY_UNET_CONFIG

SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class StoreEveryStepProcessor:
    """prompt-to-prompt style ``AttentionStore`` processor: explicit attention on every cross-attention call."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, attention_mask)
        self.store.append(probs.view(b, attn.heads, *probs.shape[1:]).mean(1).float())
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def install_store_every_step(unet) -> list:
    store: list = []
    unet.set_attn_processor({k: StoreEveryStepProcessor(store) if "attn2" in k else AttnProcessor2_0()
                             for k in unet.attn_processors})
    return store


def baseline_invert_then_regenerate(unet, latents, cond, num_steps, store) -> tuple[torch.Tensor, int]:
    """DDIMInverseScheduler loop, then DDIMScheduler regeneration; the store grows on every call."""
    inv, ddim = DDIMInverseScheduler(**SD_SCHEDULER_CONFIG), DDIMScheduler(**SD_SCHEDULER_CONFIG)
    inv.set_timesteps(num_steps)
    ddim.set_timesteps(num_steps)
    x, c, calls = latents.to(unet.dtype), cond.to(unet.dtype), 0
    with torch.no_grad():
        for t in inv.timesteps:
            x = inv.step(unet(x, t, encoder_hidden_states=c).sample, t, x).prev_sample
            calls += 1
        for t in ddim.timesteps:
            store.clear()  # keep the last step's maps only (P2P would sum them: same cost)
            x = ddim.step(unet(x, t, encoder_hidden_states=c).sample, t, x).prev_sample
            calls += 1
    return x, calls


def measure(fn: Callable[[], int], device: torch.device) -> tuple[float, float, int]:
    """Run ``fn`` once (returns images processed): (seconds, peak memory growth in MiB, images)."""
    sync(device)
    peak = PeakMemory(device)
    t0 = time.perf_counter()
    images = fn()
    sync(device)
    dt = time.perf_counter() - t0
    return dt, peak.growth_mib(), images


def round_trip_errors(unet, x0, cond, num_steps, unet_dtype) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    variants = [("fp32", torch.float32, torch.float32), ("fp64", torch.float64, torch.float64)]
    if unet_dtype != torch.float32:
        variants.append((f"{str(unet_dtype).removeprefix('torch.')} UNet, fp32 latents", unet_dtype, torch.float32))
    for name, u_dt, x_dt in variants:
        u = unet.to(u_dt)
        x, c = x0.to(x_dt), cond.to(x_dt)
        rows[name] = {m: float(reconstruction_error(x, sample(u, invert(u, x, c, method=m, num_steps=num_steps),
                                                              c, method=m, num_steps=num_steps)))
                      for m in ("ddim", "belm")}
    unet.to(unet_dtype)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="UNet dtype (latents stay fp32)")
    ap.add_argument("--unet", choices=["tiny", "sd15"], default="tiny", help="random UNet shape")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def setup(args: argparse.Namespace):
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    config = TINY_UNET_CONFIG if args.unet == "tiny" else SD15_UNET_CONFIG
    unet = UNet2DConditionModel(**config).eval().to(device, dtype)
    side, width = config["sample_size"], config["cross_attention_dim"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.images, 4, side, side, generator=g).to(device)
    cond = torch.randn(args.images, args.tokens, width, generator=g).to(device)
    return unet, x0, cond, device, dtype


def build_variants(args, unet, x0, cond, device) -> list[tuple[str, Callable[[], int], int]]:
    """(name, run -> images, UNet calls per image) of every variant; the first one is the reference."""
    n, b = args.steps, args.batch

    def ours(method: str, backend: str, batch: int) -> Callable[[], int]:
        def run() -> int:
            cap = AttentionCapture(unet, backend=backend)
            try:
                for s in range(0, args.images, batch):
                    teacher_maps(unet, x0[s : s + batch], cond[s : s + batch], method=method, num_steps=n,
                                 capture=cap)
            finally:
                cap.remove()
            return args.images
        return run

    def baseline(batch: int) -> Callable[[], int]:
        def run() -> int:
            previous = dict(unet.attn_processors)
            store = install_store_every_step(unet)
            try:
                for s in range(0, args.images, batch):
                    baseline_invert_then_regenerate(unet, x0[s : s + batch], cond[s : s + batch], n, store)
            finally:
                unet.set_attn_processor(previous)
            return args.images
        return run

    backends = ["sdpa"] + (["xformers"] if fast_attention_backend(device) == "xformers" else [])
    variants = [("baseline per-image (DDIM invert + regenerate, store every step)", baseline(1), 2 * n),
                (f"baseline batched x{b}", baseline(b), 2 * n),
                (f"ours BELM batch 1 [{backends[0]}]", ours("belm", backends[0], 1), n)]
    for backend in backends:
        variants += [(f"ours BELM batch {b} [{backend}]", ours("belm", backend, b), n),
                     (f"ours DDIM batch {b} [{backend}]", ours("ddim", backend, b), n + 1)]
    return variants


def cpu_peak_memory(argv: list[str], count: int) -> list[float]:
    """Peak-RSS growth of each variant, each measured in a fresh process (the heap of one run would hide the
    next one's allocations)."""
    out = []
    for i in range(count):
        proc = subprocess.run([sys.executable, __file__, *argv, "--memory-child", str(i)], capture_output=True,
                              text=True, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mem_mib"])
    return out


def main() -> None:
    argv = [a for a in sys.argv[1:]]
    args = parse_args(argv)
    unet, x0, cond, device, dtype = setup(args)
    variants = build_variants(args, unet, x0, cond, device)
    if args.memory_child is not None:
        _, mem, _ = measure(variants[args.memory_child][1], device)
        print(json.dumps({"peak_mem_mib": mem}))
        return
    n, b = args.steps, args.batch
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads) unet={args.unet} dtype={args.dtype} latent={tuple(x0.shape[1:])} "
          f"tokens={args.tokens} images={args.images} batch={b} steps={n} torch={torch.__version__}")
    for _, fn, _ in variants:  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    mems: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved rounds, best time: robust to other load on shared machines
        for name, fn, _ in variants:
            dt, mem, _ = measure(fn, device)
            times[name].append(dt)
            mems[name] = max(mem, mems.get(name, 0.0))
    if device.type == "cpu":
        mems = dict(zip(times, cpu_peak_memory(argv, len(variants))))
    results = {name: {"images_per_s": args.images / min(times[name]), "unet_calls_per_image": calls,
                      "peak_mem_mib": mems[name], "seconds": times[name]} for name, _, calls in variants}
    ref = results[variants[0][0]]["images_per_s"]
    print(f"\n(1,2,4) inversion + final-step maps, {args.images} images, best of {args.repeats} interleaved rounds")
    print(f"{'variant':<68} {'img/s':>8} {'x base':>7} {'UNet calls/img':>15} {'peak MiB':>9}")
    for name, r in results.items():
        print(f"{name:<68} {r['images_per_s']:>8.2f} {r['images_per_s'] / ref:>6.2f}x "
              f"{r['unet_calls_per_image']:>15d} {r['peak_mem_mib']:>9.1f}")
    print(f"invert-then-regenerate UNet calls/img: DDIM {2 * n}, BELM {2 * n - 1}; ours: BELM {n}, DDIM {n + 1}")

    k = min(args.images, 4)
    errors = round_trip_errors(unet, x0[:k], cond[:k], n, dtype)
    print(f"\n(3) round-trip error ||x0_rec - x0|| / ||x0|| ({k} latents, {n} steps, random UNet)")
    print(f"{'precision':<32} {'DDIM':>10} {'BELM':>10}")
    for name, e in errors.items():
        print(f"{name:<32} {e['ddim']:>10.2e} {e['belm']:>10.2e}")
    print("targets: BELM fp32 <= 1e-5, fp64 <= 1e-12; ours/baseline >= 2.5x on CPU at batch 8")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "throughput": results, "round_trip": errors}, indent=2) + "\n")


if __name__ == "__main__":
    main()
