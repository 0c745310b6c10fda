"""``train-teacher`` and ``teacher-report`` end to end at tiny sizes, plus the teacher's data and queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from pipeline import teacher_training
from pipeline.datasets.synthetic import generate_scene
from pipeline.teacher import (
    SPLIT_HELDOUT,
    SPLIT_TRAIN,
    TEACHER_UNET_CONFIG,
    localisation_queries,
    make_teacher_data,
)
from spade_core.diffusion.models import load_diffusion_models, write_clip_tokenizer_files
from spade_core.diffusion.prompts import build_relation_prompt
from stages import teacher_report, train_teacher


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp_path_factory.mktemp("tok")))


def test_teacher_data_uses_its_own_streams_and_the_invert_prompt_builder(tokenizer):
    data = make_teacher_data(0, SPLIT_TRAIN, 3, tokenizer, image_size=64)
    prepare_scene = generate_scene(np.random.default_rng([0, 0, 0]), 64, 2, 5)  # prepare's train image 0
    assert not np.array_equal(data.scenes[0].image, prepare_scene.image)
    held = make_teacher_data(0, SPLIT_HELDOUT, 1, tokenizer, image_size=64)
    assert not np.array_equal(data.scenes[0].image, held.scenes[0].image)
    assert data.images.shape == (3, 3, 64, 64) and data.images.min() >= -1.0 and data.images.max() <= 1.0
    for t, p in zip(data.triplets, data.prompts):
        assert torch.equal(p.token_ids, build_relation_prompt(t, tokenizer).token_ids)
    assert data.triplets[0] and all(" is " in part for part in data.prompts[0].text.split(", "))


def test_localisation_queries_split_colour_and_shape_words(tokenizer):
    data = make_teacher_data(0, SPLIT_TRAIN, 4, tokenizer, image_size=64)
    kinds = set()
    for scene, prompt in zip(data.scenes, data.prompts):
        for q in localisation_queries(scene, prompt, tokenizer):
            kinds.add(q.kind)
            assert q.tokens and q.mask.any() and q.mask.shape == (64, 64)
            if q.kind in ("colour", "shape"):
                word = tokenizer.decode(prompt.token_ids[q.tokens]).strip()
                assert (word in ("red", "blue", "green", "yellow", "orange", "purple", "cyan", "white", "pink",
                                 "black")) == (q.kind == "colour"), word
    assert {"colour", "shape", "phrase", "phrase-instance", "predicate"} <= kinds


def test_a_phrase_targets_every_instance_of_its_category(tokenizer):
    """Pointing game rule: "blue box" may point at either of two blue boxes; ``phrase-instance`` at its own."""
    data = make_teacher_data(0, SPLIT_HELDOUT, 40, tokenizer, image_size=64)
    checked = 0
    for scene, prompt in zip(data.scenes, data.prompts):
        cats = [s["category_id"] for s in scene.segments_info]
        masks = [torch.from_numpy(scene.id_map == s["id"]) for s in scene.segments_info]
        queries = localisation_queries(scene, prompt, tokenizer)
        instance = [q for q in queries if q.kind == "phrase-instance"]
        phrase = [q for q in queries if q.kind == "phrase"]
        assert len(instance) == len(phrase)
        for q, qi in zip(phrase, instance):
            seg = next(i for i, m in enumerate(masks) if torch.equal(m, qi.mask))
            same = [m for m, c in zip(masks, cats) if c == cats[seg]]
            assert torch.equal(q.mask, torch.stack(same).any(0)) and q.tokens == qi.tokens
            checked += len(same) > 1
    assert checked > 0  # the held-out scenes do hold repeated categories


def test_train_teacher_writes_a_loadable_folder_and_the_report_runs(tmp_path):
    out = tmp_path / "teacher"
    record = train_teacher.run(out, steps=4, seed=0, num_scenes=8, batch_size=4, image_size=64, eval_scenes=2,
                               log_every=0)
    models = load_diffusion_models(out)
    assert dict(models.unet.config)["block_out_channels"] == list(TEACHER_UNET_CONFIG["block_out_channels"])
    assert models.vae.config.shift_factor is not None
    card = (out / "MODEL_CARD.md").read_text()
    assert "4 steps" in card and "| colour |" in card
    saved = json.loads((out / "training.json").read_text())
    assert saved["steps"] == 4 and set(saved["localisation"]) == {"trained", "init"}
    assert np.isfinite(record["loss_last50"])
    report = teacher_report.run(out, tmp_path / "report", num_scenes=2, grid_scenes=1)
    assert set(report) == {"trained", "init"}
    assert (tmp_path / "report" / "teacher_maps.png").stat().st_size > 0
    assert "| phrase |" in (tmp_path / "report" / "teacher_report.md").read_text()
    trained_w = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(k.endswith("conv_in.weight") for k in trained_w)


def test_pooling_encoder_latents_are_pooled_colours():
    from diffusers import AutoencoderKL

    from pipeline.teacher import make_pooling_encoder
    from spade_core.diffusion.models import TINY_VAE_CONFIG

    torch.manual_seed(0)
    vae = make_pooling_encoder(AutoencoderKL(**{**TINY_VAE_CONFIG, "sample_size": 64}).eval())
    image = -torch.ones(1, 3, 64, 64)
    image[:, 0, :, :32] = 1.0  # red left half, black right half
    with torch.no_grad():
        z = vae.encode(image).latent_dist.mode()[0]
    assert z.shape == (4, 8, 8)
    left, right = z[0, :, :3].mean(), z[0, :, 5:].mean()
    assert left > right + 1.0  # red channel high on the left only
    # green channel constant, except the last row/column (the stride-2 convs zero-pad bottom/right)
    assert torch.allclose(z[1, :7, :7], z[1, 0, 0].expand(7, 7), atol=1e-4)


def test_retraining_reproduces_the_weights_and_a_failed_run_keeps_the_old_ones(tmp_path, monkeypatch):
    kwargs = dict(steps=3, seed=0, num_scenes=6, batch_size=3, image_size=64, eval_scenes=1, log_every=0)
    a, b = tmp_path / "a", tmp_path / "b"
    train_teacher.run(a, **kwargs)
    train_teacher.run(b, **kwargs)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):
        assert (a / part).read_bytes() == (b / part).read_bytes(), part
    before = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_training, "train_teacher", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_teacher.run(a, **{**kwargs, "seed": 1})
    assert {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folder left behind
