import pytest
import torch
from safetensors.torch import load_file

from spade_core.calibration import (
    OBJECT_TEMPLATES,
    PREDICATE_TEMPLATES,
    build_tiny_clip,
    encode_text,
    image_features,
    load_clip,
)
from spade_core.psg.classifier import mask_pool


def _images(clip, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, *clip.image_size, generator=g)


def test_tiny_clip_build_is_deterministic(tmp_path, tiny_clip_checkpoint):
    again = build_tiny_clip(tmp_path / "a", seed=0)
    other = build_tiny_clip(tmp_path / "b", seed=1)
    assert again.read_bytes() == tiny_clip_checkpoint.read_bytes()
    assert other.read_bytes() != tiny_clip_checkpoint.read_bytes()
    assert again.with_suffix(".json").read_text() == tiny_clip_checkpoint.with_suffix(".json").read_text()


def test_load_clip_reads_the_checkpoint(tiny_clip, tiny_clip_checkpoint, tmp_path):
    saved = load_file(str(tiny_clip_checkpoint))
    state = tiny_clip.model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert tiny_clip.image_size == (128, 128) and tiny_clip.embed_dim == 64
    assert not any(p.requires_grad for p in tiny_clip.model.parameters())
    assert not tiny_clip.model.training
    # identity depends on the weights
    other = build_tiny_clip(tmp_path, seed=3)
    assert load_clip(str(other.with_suffix(".json")), other).identity != tiny_clip.identity
    again = load_clip(str(tiny_clip_checkpoint.with_suffix(".json")), tiny_clip_checkpoint)
    assert again.identity == tiny_clip.identity


def test_load_clip_errors(tiny_clip_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_clip("ViT-B-32", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_clip("ViT-Nope-99", tiny_clip_checkpoint)
    with pytest.raises(FileNotFoundError, match="config"):
        load_clip(str(tmp_path / "nope.json"), tiny_clip_checkpoint)
    # a built-in architecture with the wrong weights fails in open_clip's strict load
    with pytest.raises(ValueError, match="does not fit"):
        load_clip("RN50", tiny_clip_checkpoint)


def test_image_features_shapes_and_projection(tiny_clip):
    images = _images(tiny_clip)
    pooled, dense = image_features(tiny_clip, images)
    assert pooled.shape == (2, 64) and dense.shape == (2, 64, 16, 16)
    visual = tiny_clip.model.visual
    assert torch.allclose(pooled, tiny_clip.model.encode_image(images), atol=1e-6)
    # reference: open_clip's own token output (after ln_post), projected by hand
    visual.output_tokens = True
    try:
        _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    ref = (tokens @ visual.proj).view(2, 16, 16, 64).permute(0, 3, 1, 2)
    assert torch.allclose(dense, ref, atol=1e-5)
    with pytest.raises(ValueError, match="spatial size"):
        image_features(tiny_clip, torch.zeros(1, 3, 64, 64))


def test_preprocess_resizes_and_normalises(tiny_clip):
    x = torch.full((1, 3, 40, 60), 0.5)
    y = tiny_clip.preprocess(x)
    assert y.shape == (1, 3, 128, 128)
    expected = (0.5 - torch.tensor(tiny_clip.mean)) / torch.tensor(tiny_clip.std)
    assert torch.allclose(y[0, :, 5, 5], expected, atol=1e-5)


def test_encode_text_normalised(tiny_clip):
    names = ["person", "dog", "traffic light"]
    emb = encode_text(tiny_clip, names, OBJECT_TEMPLATES)
    assert emb.shape == (3, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    pred = encode_text(tiny_clip, ["on", "in front of"], PREDICATE_TEMPLATES)
    assert pred.shape == (2, 64)
    single = encode_text(tiny_clip, ["dog"], ("{}",))
    assert not torch.allclose(single[0], emb[1])  # template ensembling changes the embedding
    with pytest.raises(ValueError, match="templates"):
        encode_text(tiny_clip, names, ("a photo",))


def test_mask_pool_on_dense_clip_features(tiny_clip):
    _, dense = image_features(tiny_clip, _images(tiny_clip, b=1))
    masks = torch.zeros(1, 3, 128, 128)
    masks[0, 0] = 1
    masks[0, 1, :8, :8] = 1  # exactly the top-left patch
    pooled = mask_pool(dense, masks)
    assert pooled.shape == (1, 3, 64)
    assert torch.allclose(pooled[0, 0], dense[0].mean((1, 2)), atol=1e-5)
    assert torch.allclose(pooled[0, 1], dense[0, :, 0, 0], atol=1e-5)  # the mask covers exactly one patch
    assert torch.equal(pooled[0, 2], torch.zeros(64))
