"""Train-step throughput of the PSG model with and without the frozen-feature cache, and against the previous
default, side by side.

    python benchmarks/bench_train.py [--steps 20 --batch 8 --image-size 128 --threads 1]

Builds the tiny models (random init) in a temporary folder, then times SpadePSG training steps (forward,
loss, backward, AdamW) on synthetic images (a) computing the frozen student features every step (VAE encode,
captioner, UNet at t = 0, dense CLIP) and (b) reading them from a Zarr feature cache built once (the
``train.cache_features: true`` path, build time reported separately), both with the default params; and (c) the
previous default from the cache: the RGB image at stride 4 in the pyramid (``model.pixel_stride: 4``: mask
features at stride 2 instead of 4) and the pooled CLIP logits computed in every training forward. Each variant
runs in its own process so peak RSS is its own. Prints a table with images/s, the ratio and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

VARIANTS = {
    "live": "default, features computed every step",
    "cache": "default, Zarr feature cache",
    "cache-previous": "previous default (RGB stride 4, pooled in training), cache",
}


def run_variant(variant: str, steps: int, batch: int, size: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from pipeline.features import FeatureCache, FrozenFeatures
    from pipeline.params import Params
    from pipeline.psg_model import build_psg_model, inference_config
    from pipeline.student import build_student, student_config
    from spade_core.calibration.clip import build_tiny_clip, load_clip
    from spade_core.diffusion.models import build_tiny_diffusion_models, load_diffusion_models
    from spade_core.psg.model import SpadePSG

    tmp = Path(tempfile.mkdtemp())
    build_tiny_diffusion_models(tmp / "diffusion", seed=0)
    ckpt = build_tiny_clip(tmp / "clip", seed=0)

    class Models:  # the parts of pipeline.models.LoadedModels the student needs
        diffusion = load_diffusion_models(tmp / "diffusion")
        clip = load_clip(str(tmp / "clip" / "spade-tiny-clip.json"), ckpt)
        teacher_identity, clip_identity = "bench", "bench"

    config = student_config(Models, mode="none", rank=4, alpha=4.0, targets=["attn2.to_k", "attn2.to_v"],
                            num_tokens=Models.diffusion.tokenizer.model_max_length, hidden_dim=64,
                            attn_shape=(size // 8, size // 8), image_size=size, store_settings={}, seed=0)
    student, _ = build_student(Models, config)
    previous = variant == "cache-previous"
    frozen = FrozenFeatures(Models, student, None, pixel_stride=4 if previous else Params().model.pixel_stride)
    n = steps * batch
    images = torch.rand(n, 3, size, size)
    targets = []
    for _ in range(n):
        masks = torch.zeros(4, size, size, dtype=torch.bool)
        for j in range(4):
            y, x = torch.randint(0, size - 24, (2,)).tolist()
            masks[j, y : y + 24, x : x + 24] = True
        targets.append({"labels": torch.randint(0, 16, (4,)), "masks": masks,
                        "relations": torch.tensor([[0, 1, 2], [2, 3, 5]])})
    build_seconds = 0.0
    if variant.startswith("cache"):
        t0 = time.perf_counter()
        cache = FeatureCache(tmp / "cache.zarr", "bench", n)
        batches = [list(range(i, i + batch)) for i in range(0, n, batch)]
        cache.build(frozen, batches, lambda idx: images[idx[0] : idx[-1] + 1])
        build_seconds = time.perf_counter() - t0
        get = cache.read
    else:
        def get(idx):
            return frozen(images[idx[0] : idx[-1] + 1])
    defaults = Params()  # the model the train stage builds from the default params.yaml
    model = build_psg_model(defaults.model, defaults.train, frozen.channels, Models.clip.embed_dim)
    if previous:  # the fused scores were computed in training too (inference config = evaluate's default)
        model = SpadePSG(replace(model.config, inference=inference_config(defaults.evaluate)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    obj_text = torch.nn.functional.normalize(torch.randn(16, Models.clip.embed_dim), dim=-1)
    pred_text = torch.nn.functional.normalize(torch.randn(10, Models.clip.embed_dim), dim=-1)

    def step(b: int) -> None:
        idx = list(range(b * batch, (b + 1) * batch))
        feats, dense = get(idx)
        out = model(feats, dense, obj_text, pred_text)
        loss = model.loss(out, [targets[i] for i in idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up
    t0 = time.perf_counter()
    for b in range(1, steps):
        step(b)
    seconds = time.perf_counter() - t0
    return {"variant": variant, "images_per_s": (steps - 1) * batch / seconds, "build_s": build_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.batch, args.image_size, args.threads)))
        return
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--batch",
               str(args.batch), "--image-size", str(args.image_size), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base = rows[0]["images_per_s"]
    print(f"train step, batch {args.batch}, {args.image_size} px, {args.threads} thread(s), {args.steps} steps")
    print(f"{'variant':<52}{'images/s':>10}{'ratio':>8}{'cache build s':>15}{'peak RSS MB':>13}")
    for r in rows:
        name = VARIANTS[r["variant"]]
        print(f"{name:<52}{r['images_per_s']:>10.1f}{r['images_per_s'] / base:>8.2f}x{r['build_s']:>14.1f}"
              f"{r['peak_rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
