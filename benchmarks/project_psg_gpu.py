"""Projection: how long SPADE takes on real PSG (46k training images) at SD-1.5 scale, on 1 and 8 GPUs.

No GPU has run this project yet, so this is an *estimate*, and it says which part is counted and which assumed:

* **Counted** (exact for these shapes): the floating-point operations of every model call a stage makes per image,
  with ``torch.utils.flop_counter.FlopCounterMode`` over SD-1.5's UNet and VAE and open_clip's ViT-B-32, built
  from their configs on the ``meta`` device (no weights, no memory, a second to run): a UNet forward, a VAE
  encode, a CLIP image forward, and the student's backward to its inputs (what a LoRA step back-propagates
  through; the LoRA weight gradients are negligible). Times the calls per image each stage makes with the given
  params (``pipeline.inversion.unet_calls_per_image`` for ``invert``).
* **Assumed**: the sustained throughput of one GPU (``--tflops``, default 300 TFLOP/s: about 30 % of an
  H100/H200's dense bf16 peak of 989, a common utilisation for convolution + attention UNets), and linear
  scaling over 8 GPUs (inversion shards are independent; DDP's gradient all-reduce of the LoRA and head weights
  is small). ``benchmarks/gpu_check.sh`` measures the real throughput on a GPU: rerun with its figure.
* **Not counted**: the PSG head (instance decoder, RGT, relation decoder: small next to the UNet at these
  sizes), data loading, the text encoder (once per prompt), Zarr I/O.

It also prints what the same FLOPs cost on the CPU at the rate measured on this project's 2-core machine
(``--cpu-gflops``, default 75 GFLOP/s: ``bench_sd_shapes.py --size 512 --threads 1`` timed one 512 px SD-1.5 UNet
call of ``invert``, 0.80 TFLOP, at 10.4 s on one thread, 2026-12-04).

    python benchmarks/project_psg_gpu.py                      # 512 px, the README's real-weights params
    python benchmarks/project_psg_gpu.py --tflops 410 --train-epochs 24
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sd_shapes import PSG_TRAIN_IMAGES, SD15_UNET_CONFIG, SD15_VAE_CONFIG

from pipeline.inversion import unet_calls_per_image

PSG_TEST_IMAGES = 2_186  # OpenPSG's test split


def count(fn) -> float:
    """Floating-point operations of ``fn()`` (FlopCounterMode counts a multiply-add as 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def model_flops(size: int) -> dict[str, float]:
    """Per-image FLOPs at ``size`` px of the calls the stages make (batch 1, meta device)."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel

    meta = torch.device("meta")
    with meta:
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG).requires_grad_(False)
        vae = AutoencoderKL(**SD15_VAE_CONFIG).requires_grad_(False)
        clip = open_clip.create_model("ViT-B-32", pretrained=None, device=meta).requires_grad_(False)
        latent = torch.randn(1, 4, size // 8, size // 8)
        cond, image = torch.randn(1, 77, 768), torch.randn(1, 3, size, size)
        clip_in = torch.randn(1, 3, 224, 224)
    t = torch.tensor([500], device=meta)
    forward = count(lambda: unet(latent, t, encoder_hidden_states=cond))

    def backward() -> None:
        x = latent.clone().requires_grad_(True)
        unet(x, t, encoder_hidden_states=cond).sample.sum().backward()

    return {"unet": forward, "unet_fwd_bwd": count(backward), "vae_encode": count(lambda: vae.encode(image)),
            "clip_image": count(lambda: clip.encode_image(clip_in))}


def stage_work(f: dict[str, float], args: argparse.Namespace) -> list[tuple[str, str, float, float]]:
    """(stage, what is counted, images processed, FLOPs per processed image) for one PSG run."""
    inv = SimpleNamespace(method=args.invert_method, regenerate=False, noise="inversion", num_steps=args.invert_steps)
    calls = unet_calls_per_image(inv)
    n, features = PSG_TRAIN_IMAGES, f["vae_encode"] + f["unet"] + f["clip_image"]
    epochs = 1 if args.cache_features else args.train_epochs
    return [
        ("invert", f"VAE encode + {calls} UNet calls ({args.invert_method}, {args.invert_steps} steps)", n,
         f["vae_encode"] + calls * f["unet"]),
        ("calibrate", f"{args.calibrate_epochs} epoch(s): VAE encode + CLIP + UNet forward and backward",
         args.calibrate_epochs * n, f["vae_encode"] + f["clip_image"] + f["unet_fwd_bwd"]),
        ("train", f"{epochs} feature pass(es) (VAE + UNet + CLIP){', cached' if args.cache_features else ''}",
         epochs * n, features),
        ("evaluate", "1 feature pass over the test split", PSG_TEST_IMAGES, features),
    ]


def hours(flops: float, rate: float) -> str:
    s = flops / rate
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def cpu_time(flops: float, rate: float) -> str:
    days = flops / rate / 86400
    return f"{days / 365:.1f} years" if days >= 365 else f"{days:.0f} days" if days >= 2 else f"{24 * days:.0f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--invert-method", choices=("belm", "ddim"), default="belm")
    ap.add_argument("--invert-steps", type=int, default=50)
    ap.add_argument("--calibrate-epochs", type=float, default=1.0)
    ap.add_argument("--train-epochs", type=int, default=12)
    ap.add_argument("--cache-features", action="store_true", help="train reads cached features (one pass)")
    ap.add_argument("--tflops", type=float, default=300.0, help="assumed sustained TFLOP/s of one GPU")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--cpu-gflops", type=float, default=75.0, help="the 2-core machine's measured rate")
    args = ap.parse_args()

    f = model_flops(args.size)
    print(f"FLOPs per image at {args.size} px (counted): UNet forward {f['unet'] / 1e12:.3f} T, "
          f"UNet forward + input backward {f['unet_fwd_bwd'] / 1e12:.3f} T, VAE encode {f['vae_encode'] / 1e12:.3f} T, "
          f"CLIP ViT-B-32 image {f['clip_image'] / 1e12:.4f} T")
    gpu, cpu = args.tflops * 1e12, args.cpu_gflops * 1e9
    print(f"\nPSG ({PSG_TRAIN_IMAGES:,} train / {PSG_TEST_IMAGES:,} test images); GPU time at an assumed "
          f"{args.tflops:.0f} TFLOP/s per GPU, linear over {args.gpus}; CPU at {args.cpu_gflops:.0f} GFLOP/s\n")
    print(f"| stage | work | PFLOP | 1 GPU | {args.gpus} GPUs | 2-core CPU |")
    print("|---|---|---:|---:|---:|---:|")
    total = 0.0
    for stage, what, images, per_image in stage_work(f, args):
        flops = images * per_image
        total += flops
        print(f"| {stage} | {what} | {flops / 1e15:,.0f} | {hours(flops, gpu)} | {hours(flops, args.gpus * gpu)} | "
              f"{cpu_time(flops, cpu)} |")
    print(f"| all | | {total / 1e15:,.0f} | {hours(total, gpu)} | {hours(total, args.gpus * gpu)} | "
          f"{cpu_time(total, cpu)} |")


if __name__ == "__main__":
    main()
