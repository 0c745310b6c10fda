"""Tiny preset: build -> save (diffusers layout) -> load through the real-weights path; tokenizer conversion."""

from __future__ import annotations

import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from spade_core.diffusion.models import (
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    build_tiny_diffusion_models,
    decode_latents,
    encode_images,
    encode_prompts,
    load_diffusion_models,
    model_identity,
)

PROMPTS = ["a person is riding a horse", "Sky is above   GRASS, dog is in front of tree-merged",
           "playingfield is beside pavement"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_diffusion_models(root / "a", seed=0), build_tiny_diffusion_models(root / "b", seed=0)


def test_layout_and_byte_identical_builds(tiny_dirs):
    a, b = tiny_dirs
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    for f in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
              "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
              "scheduler/scheduler_config.json"):
        assert f in files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert model_identity(a) == model_identity(b)


def test_identity_changes_with_weights(tiny_dirs, tmp_path):
    a, _ = tiny_dirs
    c = Path(shutil.copytree(a, tmp_path / "c"))
    assert model_identity(c) == model_identity(a)  # content hash, not a path hash
    w = c / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert model_identity(c) != model_identity(a)


def test_load_equals_in_memory_models(tiny_dirs):
    models = load_diffusion_models(tiny_dirs[0])
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG).eval()
    torch.manual_seed(1)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    torch.manual_seed(2)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    lat = encode_images(models.vae, images)
    assert lat.shape == (2, 4, 16, 16) and lat.dtype == torch.float32
    assert torch.equal(lat, encode_images(vae, images)) and torch.equal(lat, encode_images(models.vae, images))
    assert decode_latents(models.vae, lat).shape == (2, 3, 128, 128)
    cond, ids, lengths = encode_prompts(models.text_encoder, models.tokenizer, PROMPTS)
    assert cond.shape == (3, 77, 32) and ids.shape == (3, 77) and lengths.tolist() == [8, 15, 7]
    assert torch.equal(cond, encode_prompts(text, models.tokenizer, PROMPTS)[0])
    with torch.no_grad():
        out = models.unet(lat, 21, encoder_hidden_states=cond[:2]).sample
        assert torch.equal(out, unet(lat, 21, encoder_hidden_states=cond[:2]).sample)
    assert models.scheduler_config["beta_schedule"] == "scaled_linear"
    assert models.identity == model_identity(models) == model_identity(tiny_dirs[0])


def test_tokenizer_matches_open_clip(tiny_dirs):
    tok = load_diffusion_models(tiny_dirs[0]).tokenizer
    ref = open_clip.tokenizer.SimpleTokenizer()
    batch = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    expected = ref(PROMPTS)  # [3, 77], start/end tokens, padded with 0
    for row, (got, want) in enumerate(zip(batch["input_ids"], expected)):
        n = int(batch["attention_mask"][row].sum())
        assert got[:n].tolist() == want[:n].tolist()
        assert got[0] == 49406 and got[n - 1] == 49407 and int((want != 0).sum()) == n
    assert tok.model_max_length == 77 and len(tok) == 49408


def test_incomplete_folder_errors(tiny_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusion_models(tmp_path / "nothing")
    c = Path(shutil.copytree(tiny_dirs[0], tmp_path / "c"))
    shutil.rmtree(c / "vae")
    with pytest.raises(FileNotFoundError, match="'vae/'"):
        load_diffusion_models(c)
    shutil.copytree(tiny_dirs[0] / "vae", c / "vae")
    (c / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer/merges.txt"):
        model_identity(c)
    shutil.copy(tiny_dirs[0] / "tokenizer" / "merges.txt", c / "tokenizer")
    (c / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_diffusion_models(c)


def test_encode_input_errors(tiny_dirs):
    models = load_diffusion_models(tiny_dirs[0])
    with pytest.raises(ValueError, match="images"):
        encode_images(models.vae, torch.zeros(1, 1, 128, 128))
    with pytest.raises(ValueError, match="prompts"):
        encode_prompts(models.text_encoder, models.tokenizer, "a string")
