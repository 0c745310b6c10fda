"""The embedded CLIP's data, crops and training loop, at tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.clip_training import (
    LOSS_TERMS,
    SPLIT_HELDOUT,
    SPLIT_TRAIN,
    crop_boxes,
    make_clip_scenes,
    padded_masks,
    pair_predicate_targets,
    predicate_log_prior,
    train_clip,
    union_box_regions,
    union_masks,
)
from pipeline.datasets.synthetic import generate_scene
from spade_core.calibration.clip import tiny_clip_model


@pytest.fixture(scope="module")
def scenes():
    return make_clip_scenes(0, SPLIT_TRAIN, 6)


def test_scenes_come_from_their_own_streams_and_are_consistent(scenes):
    again = make_clip_scenes(0, SPLIT_TRAIN, 2)
    assert torch.equal(again.images, scenes.images[:2]) and again.captions == scenes.captions[:2]
    prepare_image = generate_scene(np.random.default_rng([0, 0, 0]), 128, 2, 5).image  # prepare's train image 0
    teacher_image = generate_scene(np.random.default_rng([0, 2, 0]), 128, 2, 5).image  # the teacher's scene 0
    for other in (prepare_image, teacher_image):
        assert not np.array_equal(scenes.images[0].permute(1, 2, 0).numpy(), other)
    assert not torch.equal(make_clip_scenes(0, SPLIT_HELDOUT, 1).images[0], scenes.images[0])
    for i in range(len(scenes)):
        masks = scenes.masks(i)
        assert torch.equal(masks.sum(0), torch.ones(128, 128))  # every pixel in exactly one segment
        for k, (x0, y0, x1, y1) in enumerate(scenes.boxes[i].long().tolist()):
            ys, xs = torch.nonzero(masks[k], as_tuple=True)
            assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)
        assert " is " in scenes.captions[i] and len(scenes.relations[i])


def test_crop_boxes_resamples_the_box_region():
    images = torch.zeros(2, 3, 32, 32)
    images[0, 0, 8:16, 4:20] = 1.0  # a red block
    images[1, 2] = 0.5
    crops = crop_boxes(images, torch.tensor([[4.0, 8.0, 20.0, 16.0], [0.0, 0.0, 32.0, 32.0]]), (16, 16), margin=0.0)
    assert crops.shape == (2, 3, 16, 16)
    # bilinear resampling: the inside is the block, only the outermost samples blend with the border
    assert torch.allclose(crops[0, 0, 1:-1, 1:-1], torch.ones(14, 14), atol=1e-5) and crops[0, 0].min() > 0.6
    assert crops[0, 1:].abs().max() < 1e-6
    assert torch.allclose(crops[1, 2], torch.full((16, 16), 0.5))


def test_padded_and_union_masks(scenes):
    idx = torch.tensor([0, 1])
    masks, labels = padded_masks(scenes, idx)
    n0 = len(scenes.labels[0])
    assert masks.shape[:2] == labels.shape and torch.equal(labels[0, :n0], scenes.labels[0])
    assert (labels[0, n0:] == -1).all() and masks[0, n0:].sum() == 0
    unions, preds, rels = union_masks(scenes, idx, None)
    s, o, p = rels[0][0].tolist()
    seg = scenes.masks(0)
    assert torch.equal(unions[0, 0], torch.maximum(seg[s], seg[o])) and int(preds[0, 0]) == p
    capped = union_masks(scenes, idx, torch.Generator().manual_seed(0), max_pairs=1)[2]
    assert all(len(r) <= 1 for r in capped)


def test_union_boxes_pair_targets_and_prior(scenes):
    idx = torch.tensor([0, 1, 2])
    _, preds, rels = union_masks(scenes, idx, None)
    boxes = union_box_regions(scenes, idx, rels)
    assert boxes.shape == (3, preds.shape[1], 128, 128)
    for b, i in enumerate(idx.tolist()):
        for r, (s, o, _) in enumerate(rels[b].tolist()):
            ys, xs = torch.nonzero(boxes[b, r], as_tuple=True)
            x0, y0 = torch.minimum(scenes.boxes[i][s, :2], scenes.boxes[i][o, :2]).long().tolist()
            x1, y1 = torch.maximum(scenes.boxes[i][s, 2:], scenes.boxes[i][o, 2:]).long().tolist()
            assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)
            assert int(boxes[b, r].sum()) == (x1 - x0) * (y1 - y0)  # the whole box, not only the masks
        assert boxes[b, len(rels[b]):].sum() == 0
    targets = pair_predicate_targets(scenes, idx, rels, 10)
    for b, i in enumerate(idx.tolist()):
        rel = scenes.relations[i].tolist()
        for r, (s, o, p) in enumerate(rels[b].tolist()):
            names = {q for s2, o2, q in rel if (s2, o2) == (s, o)}
            assert set(torch.nonzero(targets[b, r]).flatten().tolist()) == names
            assert targets[b, r, p] == 1
        assert targets[b, len(rels[b]):].sum() == 0
    prior = predicate_log_prior(scenes, 10)
    counts = torch.bincount(torch.cat(scenes.relations)[:, 2], minlength=10).float() + 1
    assert torch.allclose(prior.exp(), counts / counts.sum())


def test_train_clip_is_deterministic_and_logs_every_term(scenes):
    runs = []
    for _ in range(2):
        model = tiny_clip_model(0)
        result = train_clip(model, scenes, steps=2, batch_size=3, seed=1, warmup=1)
        runs.append(result.history)
        assert not model.training
    assert runs[0] == runs[1]
    assert set(LOSS_TERMS) <= set(runs[0][0]) and all(np.isfinite(r["loss"]) for r in runs[0])
    with pytest.raises(ValueError, match="terms"):
        train_clip(tiny_clip_model(0), scenes, steps=1, terms=("global", "captions"))
