"""Benchmark: Stable-Diffusion-1.5-shaped models (random weights, built from SD's configs: no download).

Builds SD-1.5's UNet (859.5 M parameters), VAE (83.7 M) and CLIP text encoder (123.1 M) from their configs
(written out below) and a random open_clip ViT-B-32 (``pretrained=None``), then, per dtype (the dtype of the
UNet, VAE and text encoder, as ``model.dtype``; CLIP, the captioner, LoRA and the PSG head stay float32),
measures with the pipeline's own code:

* ``invert call``: one UNet call of the ``invert`` stage (attention capture installed, not recording), and
  ``invert rec. call``: the call that records the teacher maps (one per image with BELM);
* ``calibrate step``: one calibration step of ``calibrate.mode: lora`` (default params): VAE encode, captioner,
  student UNet at t = 0 with the maps' graph kept, ``calibration_loss`` at the latent grid, backward, AdamW;
* ``train features``: one :class:`pipeline.features.FrozenFeatures` call (the ``train`` / ``evaluate`` feature
  pass: VAE encode, captioner, UNet up to the last default block, dense CLIP);
* with ``--belm-steps N``: the BELM round-trip error ``||x0_rec - x0|| / ||x0||`` of an N-step inversion with
  float32 and float64 latents (``spade_core.diffusion.invert(..., latent_dtype=...)``, docs/INVERSION.md §6).

Time is one timed call after one untimed warm-up call (``--repeats`` timed calls, their median; the calibrate
and feature calls are not warmed up unless ``--warmup-heavy``). Memory: "peak +MiB" is the growth of the CPU
peak RSS (VmHWM, reset through /proc/self/clear_refs) or of CUDA ``max_memory_allocated`` during the warm-up
and timed calls over what was resident just before (activations, gradients, optimizer state: not the weights,
whose size per dtype is printed separately; on the CPU, memory an earlier measurement freed but the allocator
kept is not counted again, so the CPU figures are lower bounds). The CPU times of a machine shared with other
jobs vary several-fold between runs. Usage::

    python benchmarks/bench_sd_shapes.py                          # CPU, 256 px, batch 1, float32 + bfloat16
    python benchmarks/bench_sd_shapes.py --size 512 --batch 2     # slow on a CPU (~40 s per UNet call)
    python benchmarks/bench_sd_shapes.py --device cuda --dtypes float32,bfloat16,float16 --size 512 --belm-steps 10
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import PeakMemory, sync

SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)
SD15_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=512, act_fn="silu", scaling_factor=0.18215,
)
SD15_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
    eos_token_id=49407, pad_token_id=1,
)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


@dataclass
class BenchModels:
    """The parts of :class:`pipeline.models.LoadedModels` the student and the features read."""

    diffusion: Any
    clip: Any
    teacher_identity: str = "bench-sd15-random"
    clip_identity: str = "bench-vit-b-32-random"


PSG_TRAIN_IMAGES = 46_000  # OpenPSG's training split, rounded


def millions(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def build_float32(seed: int, tmp: Path) -> BenchModels:
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from spade_core.calibration.clip import ClipModels
    from spade_core.diffusion.models import DiffusionModels, write_clip_tokenizer_files

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    vae = AutoencoderKL(**SD15_VAE_CONFIG).eval()
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp / "tokenizer"), local_files_only=True)
    clip_model = open_clip.create_model("ViT-B-32", pretrained=None).eval().requires_grad_(False)
    visual = clip_model.visual
    pp = visual.preprocess_cfg
    clip = ClipModels(model=clip_model, tokenizer=open_clip.get_tokenizer("ViT-B-32"),
                      mean=tuple(float(v) for v in pp["mean"]), std=tuple(float(v) for v in pp["std"]),
                      image_size=tuple(int(v) for v in visual.image_size), embed_dim=int(visual.output_dim),
                      identity="bench")
    for m in (unet, vae, text):
        m.requires_grad_(False)
    diffusion = DiffusionModels(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                                scheduler_config=dict(SD15_SCHEDULER), identity="bench", path=tmp)
    print(f"built: UNet {millions(unet):.1f} M, VAE {millions(vae):.1f} M, text encoder {millions(text):.1f} M, "
          f"CLIP ViT-B-32 {millions(clip_model):.1f} M parameters", flush=True)
    return BenchModels(diffusion=diffusion, clip=clip)


def cast(models: BenchModels, dtype: torch.dtype, device: torch.device) -> BenchModels:
    """A copy with the UNet / VAE / text encoder in ``dtype`` on ``device`` (as ``load_models`` gives)."""
    d = copy.copy(models.diffusion)
    d.unet = copy.deepcopy(models.diffusion.unet).to(device, dtype)
    d.vae = copy.deepcopy(models.diffusion.vae).to(device, dtype)
    d.text_encoder = copy.deepcopy(models.diffusion.text_encoder).to(device, dtype)
    clip = copy.copy(models.clip)
    clip.model = models.clip.model.to(device)
    return BenchModels(diffusion=d, clip=clip)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """(median seconds of the timed calls, peak memory MiB of all the calls above what was resident before)."""
    gc.collect()
    sync(device)
    peak = PeakMemory(device)
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), peak.growth_mib()


def run_dtype(base: BenchModels, dtype: torch.dtype, args, device: torch.device) -> list[tuple[str, float, float]]:
    from pipeline.features import FrozenFeatures
    from pipeline.params import Params
    from pipeline.student import build_student, student_config, student_maps
    from spade_core.calibration import calibration_loss
    from spade_core.diffusion import AttentionCapture, encode_images, encode_prompts, invert, reconstruction_error
    from spade_core.diffusion import sample as belm_sample

    rows: list[tuple[str, float, float]] = []
    models = cast(base, dtype, device)
    d = models.diffusion
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    x0 = encode_images(d.vae, images * 2 - 1)
    cond, _, lengths = encode_prompts(d.text_encoder, d.tokenizer, ["a photo of a dog on a sofa"] * args.batch)
    latent = x0.shape[-1]
    weights = sum(p.numel() * p.element_size() for m in (d.unet, d.vae, d.text_encoder) for p in m.parameters())
    print(f"  {str(dtype)[6:]}: UNet + VAE + text encoder weights {weights / 2**20:.0f} MiB", flush=True)

    # invert: the teacher UNet with the capture installed (as stages/invert.py)
    capture = AttentionCapture(d.unet)
    t = torch.tensor(1, device=device)

    def call(record: bool) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            if record:
                with capture.recording():
                    d.unet(x0.to(dtype), t, encoder_hidden_states=cond.to(dtype))
                capture.maps((latent, latent))
                capture.clear()
            else:
                d.unet(x0.to(dtype), t, encoder_hidden_states=cond.to(dtype))
        return run

    rows.append(("invert call", *measure(call(False), device, args.repeats)))
    rows.append(("invert rec. call", *measure(call(True), device, args.repeats, warmup=False)))
    if args.belm_steps:
        for lat in (torch.float32, torch.float64):
            pair = invert(d.unet, x0, cond, method="belm", num_steps=args.belm_steps, latent_dtype=lat)
            rec = belm_sample(d.unet, pair, cond, method="belm", num_steps=args.belm_steps, latent_dtype=lat)
            err = float(reconstruction_error(x0, rec))
            rows.append((f"BELM {args.belm_steps}-step error, {str(lat)[6:]} latents", err, float("nan")))
            print(f"  {str(dtype)[6:]}: {rows[-1][0]} = {err:.2e}", flush=True)
    capture.remove()

    # calibrate: one LoRA step (default calibrate params) at the latent grid (invert.attn_resolution: null)
    c = Params().calibrate
    config = student_config(models, mode=c.mode, rank=c.lora_rank, alpha=c.lora_alpha, targets=c.lora_targets,
                            num_tokens=d.tokenizer.model_max_length, hidden_dim=c.adapter_hidden_dim,
                            attn_shape=(latent, latent), image_size=args.size, store_settings={}, seed=0)
    student, lora = build_student(models, config)
    params = list(lora) + student.captioner.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=c.lr)
    scapture = AttentionCapture(student.unet, keep_graph=True)
    teacher = torch.rand(args.batch, d.tokenizer.model_max_length, latent, latent, generator=g).to(device)
    mask = torch.arange(teacher.shape[1], device=device)[None] < lengths.to(device)[:, None]

    def calibrate_step() -> None:
        lat = encode_images(student.vae, images * 2 - 1)
        maps = student_maps(student, scapture, images, (latent, latent), latents=lat)
        calibration_loss(maps, teacher, mask, lam=c.lam).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows.append(("calibrate step", *measure(calibrate_step, device, args.repeats, warmup=args.warmup_heavy)))
    scapture.remove()

    # train / evaluate features: FrozenFeatures with the default blocks and pixel_stride
    student.unet.requires_grad_(False)
    student.captioner.requires_grad_(False)
    frozen = FrozenFeatures(models, student, None, pixel_stride=Params().model.pixel_stride)
    rows.append(("train features", *measure(lambda: frozen(images), device, args.repeats,
                                             warmup=args.warmup_heavy)))
    print(f"  {str(dtype)[6:]}: feature blocks {frozen.extractor.block_indices}, channels {frozen.channels}",
          flush=True)
    feats, dense = frozen(images[:1])
    cached = 2 * (sum(f.numel() for f in feats) + dense.numel())  # the feature cache stores float16
    print(f"  {str(dtype)[6:]}: feature cache {cached / 2**20:.2f} MiB per image (float16), "
          f"{cached * PSG_TRAIN_IMAGES / 1e9:.0f} GB for PSG's {PSG_TRAIN_IMAGES} training images", flush=True)
    frozen.extractor.remove()
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image size in px (512: SD's; slow on a CPU)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32,bfloat16,float16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per measurement (median)")
    ap.add_argument("--warmup-heavy", action="store_true", help="also warm up the calibrate / feature calls")
    ap.add_argument("--belm-steps", type=int, default=0, help="also measure BELM round-trip error at N steps")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.size % 64:
        raise SystemExit("--size must be a multiple of 64 (VAE x8, UNet x8)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",") if name.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        base = build_float32(args.seed, Path(tmp))
        print(f"built in {time.perf_counter() - t:.0f} s; {args.size} px, batch {args.batch}, {device}, "
              f"{torch.get_num_threads()} threads", flush=True)
        results = {}
        for dtype in dtypes:
            t = time.perf_counter()
            results[dtype] = run_dtype(base, dtype, args, device)
            gc.collect()
            print(f"  {str(dtype)[6:]} done in {time.perf_counter() - t:.0f} s", flush=True)
    names = [r[0] for r in results[dtypes[0]]]
    head = "| measurement | " + " | ".join(f"{str(dt)[6:]} s | {str(dt)[6:]} peak +MiB" for dt in dtypes) + " |"
    print(f"\nSD-1.5-shaped, random weights, {args.size} px, batch {args.batch}, {device}:\n")
    print(head)
    print("|" + "---|" * (1 + 2 * len(dtypes)))
    for i, name in enumerate(names):
        cells = []
        for dt in dtypes:
            _, value, mem = results[dt][i]
            cells += [f"{value:.2e}" if "error" in name else f"{value:.2f}", "" if mem != mem else f"{mem:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
