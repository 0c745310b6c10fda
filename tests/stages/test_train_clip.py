"""``train-clip`` and ``clip-report`` end to end at tiny sizes (the shipped CLIP's own floor is in
tests/pipeline/test_clip_eval.py)."""

from __future__ import annotations

import json

import open_clip
import torch
from safetensors.torch import load_file

from spade_core.calibration.clip import TINY_CLIP_NAME, load_clip
from stages import clip_report, train_clip

KEYS = {"crop_accuracy", "region_accuracy", "retrieval_r1", "predicate_accuracy"}


def test_train_clip_writes_an_open_clip_checkpoint_and_a_model_card(tmp_path):
    out = tmp_path / "clip"
    record = train_clip.run(out, steps=2, num_scenes=6, batch_size=3, eval_scenes=4)
    ckpt = out / f"{TINY_CLIP_NAME}.safetensors"
    assert {p.name for p in out.iterdir()} == {f"{TINY_CLIP_NAME}.json", ckpt.name, "training.json", "MODEL_CARD.md"}
    # the real open_clip path: register the architecture JSON, create_model(arch, pretrained=<file>)
    open_clip.add_model_config(out / f"{TINY_CLIP_NAME}.json")
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(ckpt))
    state = load_file(str(ckpt))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert load_clip(out / f"{TINY_CLIP_NAME}.json", ckpt).embed_dim == 64
    assert json.loads((out / "training.json").read_text())["steps"] == 2 == record["steps"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "crop accuracy, novel objects" in card and "spade train-clip" in card
    assert set(record["report"]) >= KEYS and set(record["report"]["init"]) >= KEYS

    report_dir, json_file = tmp_path / "report", tmp_path / "figures.json"
    figures = clip_report.run(out, report_dir, num_scenes=4, json_path=json_file)
    saved = json.loads(json_file.read_text())
    assert set(saved) >= KEYS and set(saved["init"]) >= KEYS and {"base", "novel"} <= set(saved["crop_accuracy"])
    assert saved == json.loads((report_dir / "clip_report.json").read_text())
    assert figures["eval_scenes"] == 4 and (report_dir / "clip_report.png").stat().st_size > 1000
    assert "| image -> caption R@1 |" in (report_dir / "clip_report.md").read_text()
