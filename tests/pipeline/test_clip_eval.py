"""The shipped embedded CLIP (teacher/clip): what it recognises zero-shot, and how the tiny preset uses it."""

from __future__ import annotations

import json

import pytest

from pipeline import paths
from pipeline.clip_eval import chance_levels, clip_scores, format_report, load_weights
from pipeline.clip_training import SPLIT_HELDOUT, make_clip_scenes
from pipeline.hashing import file_digest
from pipeline.models import copy_embedded_clip
from spade_core.calibration.clip import TINY_CLIP_NAME, build_tiny_clip

# Zero-shot crop accuracy over all 16 object classes on novel ones (16-way chance 0.06). The shipped CLIP
# measured 0.99 on 200 held-out scenes (MODEL_CARD.md); 40 scenes hold ~60 novel segments.
NOVEL_CROP_FLOOR = 0.9
NOVEL_REGION_FLOOR = 0.9  # the same with mask-pooled dense features (what the PSG model's pooled branch reads)


@pytest.fixture(scope="module")
def held_out():
    return make_clip_scenes(0, SPLIT_HELDOUT, 40)


def test_shipped_clip_recognises_novel_objects_zero_shot(held_out):
    scores = clip_scores(load_weights(paths.EMBEDDED_CLIP), held_out)
    assert scores["crop_accuracy"]["n_novel"] >= 40
    assert scores["crop_accuracy"]["novel"] >= NOVEL_CROP_FLOOR, scores["crop_accuracy"]
    assert scores["region_accuracy"]["novel"] >= NOVEL_REGION_FLOOR, scores["region_accuracy"]
    assert scores["retrieval_r1"] > 5 * chance_levels(40)["retrieval"]


def test_random_init_is_near_chance(tmp_path, held_out):
    build_tiny_clip(tmp_path, seed=0)
    scores = clip_scores(load_weights(tmp_path), held_out)
    assert scores["crop_accuracy"]["novel"] < 0.3 and scores["region_accuracy"]["all"] < 0.3


def test_model_card_and_training_record_agree():
    record = json.loads((paths.EMBEDDED_CLIP / "training.json").read_text())
    assert format_report(record["report"]) in (paths.EMBEDDED_CLIP / "MODEL_CARD.md").read_text()
    assert record["report"]["crop_accuracy"]["novel"] >= NOVEL_CROP_FLOOR


def test_tiny_preset_copies_the_shipped_clip(tmp_path):
    from pipeline.models import build_manifest, load_models
    from pipeline.params import Params

    manifest = build_manifest(Params().model, tmp_path)  # model.preset: tiny (the default)
    shipped = paths.EMBEDDED_CLIP / f"{TINY_CLIP_NAME}.safetensors"
    assert manifest["clip"]["identity"] == file_digest(shipped)
    assert not (tmp_path / "clip" / "MODEL_CARD.md").exists()
    loaded = load_models(tmp_path)
    assert loaded.clip.identity == load_weights(paths.EMBEDDED_CLIP).identity
    random = build_manifest(Params(model={"preset": "tiny-random"}).model, tmp_path / "random")
    assert random["clip"]["identity"] != manifest["clip"]["identity"]


def test_missing_clip_is_a_clear_error(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / f"{TINY_CLIP_NAME}.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"embedded CLIP lacks \['.*/clip/spade-tiny-clip.safetensors'\]"):
        copy_embedded_clip(tmp_path / "out", source=tmp_path / "clip")
    assert not (tmp_path / "out").exists()
