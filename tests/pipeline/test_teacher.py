"""The embedded teacher shipped in teacher/weights: it loads through the real loader, the ``tiny`` preset uses
it, and its cross-attention maps point at the objects their tokens name on held-out scenes."""

from __future__ import annotations

import json

import pytest

from pipeline import paths
from pipeline.models import copy_embedded_teacher
from pipeline.teacher import SPLIT_HELDOUT, evaluate_localisation, make_teacher_data
from spade_core.diffusion.models import load_diffusion_models, model_identity

POINTING_FLOOR = 0.7  # pointing game (category-level); the shipped teacher measured 0.80-0.82 on 100 held-out scenes


@pytest.fixture(scope="module")
def teacher():
    return load_diffusion_models(paths.TEACHER_WEIGHTS)


def test_shipped_teacher_points_at_the_named_objects(teacher):
    record = json.loads((paths.TEACHER_WEIGHTS / "training.json").read_text())
    held = make_teacher_data(record["seed"], SPLIT_HELDOUT, 40, teacher.tokenizer, record["image_size"])
    summary, _ = evaluate_localisation(teacher, held)
    for kind in ("colour", "phrase"):
        assert summary[kind]["pointing"] >= POINTING_FLOOR, (kind, summary[kind])


def test_tiny_preset_copies_the_shipped_teacher(tmp_path):
    from pipeline.models import build_manifest
    from pipeline.params import Params

    manifest = build_manifest(Params().model, tmp_path)  # model.preset: tiny (the default)
    assert manifest["preset"] == "tiny"
    assert manifest["diffusion"]["identity"] == model_identity(paths.TEACHER_WEIGHTS)
    assert not (tmp_path / "diffusion" / "MODEL_CARD.md").exists()
    random = build_manifest(Params(model={"preset": "tiny-random"}).model, tmp_path / "random")
    assert random["diffusion"]["identity"] != manifest["diffusion"]["identity"]


def test_missing_teacher_is_a_clear_error(tmp_path):
    (tmp_path / "weights" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"embedded teacher .*weights lacks \['vae', 'text_encoder'"):
        copy_embedded_teacher(tmp_path / "out", source=tmp_path / "weights")
    assert not (tmp_path / "out").exists()
