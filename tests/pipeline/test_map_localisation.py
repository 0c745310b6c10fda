"""Localisation of stored teacher maps against the dataset's masks (``pipeline.map_localisation``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets.index import IndexRecord, box_regions, read_index
from pipeline.map_localisation import stored_map_localisation, stored_queries
from pipeline.params import ScopedParams, default_params_dict, parse_params
from pipeline.stores import InversionStore, StoreGeometry
from spade_core.diffusion.localisation import score_queries, summarise
from spade_core.diffusion.prompts import ROLE_OBJECT, ROLE_PREDICATE, ROLE_SUBJECT
from stages import prepare

T, HA = 8, 64  # maps at the image's resolution: an oracle map is exactly the mask


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Four prepared synthetic training records with relations (the ``prepare`` stage at 64 px)."""
    raw = default_params_dict()
    raw["prepare"]["synthetic"].update(num_train=6, num_test=2, image_size=64)
    root = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        prepare.run(ScopedParams(parse_params(raw), prepare.PARAMS))
    recs = [r for r in read_index(root / "data/prepared/index/train.parquet") if r.relations]
    return recs[:4]


def prompt_layout(record) -> tuple[np.ndarray, np.ndarray]:
    """roles / triplet_index [T] of a prompt that keeps the record's first triplet: s s p o o pad..."""
    roles = np.zeros(T, np.int64)
    trip = np.full(T, -1, np.int64)
    roles[1:6] = [ROLE_SUBJECT, ROLE_SUBJECT, ROLE_PREDICATE, ROLE_OBJECT, ROLE_OBJECT]
    trip[1:6] = 0
    return roles, trip


def write_store(path: Path, records, maps: list[np.ndarray]) -> InversionStore:
    geom = StoreGeometry(num_images=len(records), latent_shape=(4, 8, 8), num_tokens=T, attn_shape=(HA, HA),
                         shard_size=len(records))
    store = InversionStore.create_or_open(path, geom, [r.image_id for r in records], {"teacher": "x"})
    n = len(records)
    layouts = [prompt_layout(r) for r in records]
    store.write_shard(0, {
        "latents": np.zeros((n, 2, 4, 8, 8), np.float32),
        "attn": np.stack(maps).astype(np.float16),
        "tokens": np.zeros((n, T), np.int64),
        "roles": np.stack([lay[0] for lay in layouts]),
        "triplet_index": np.stack([lay[1] for lay in layouts]),
        "lengths": np.full(n, 7),
        "recon_error": np.zeros(n),
    })
    store.write_manifest()
    return store


def oracle_maps(record, roles, trip, regions=None) -> np.ndarray:
    """Maps equal to the masks of what each token names: a perfect teacher."""
    small = torch.from_numpy(record.load_panoptic() if regions is None else regions).float()
    s, o, _ = record.relations[0]
    out = np.zeros((T, HA, HA), np.float32)
    for t in range(T):
        if trip[t] == 0:
            out[t] = {ROLE_SUBJECT: small[s], ROLE_OBJECT: small[o], ROLE_PREDICATE: small[s] + small[o]}[roles[t]]
    return out


def test_a_perfect_teacher_points_everywhere_and_an_inverted_one_nowhere(records, tmp_path):
    perfect = [oracle_maps(r, *prompt_layout(r)) for r in records]
    good = stored_map_localisation(write_store(tmp_path / "good.zarr", records, perfect), records)
    assert set(good) == {"entity", "entity-instance", "predicate"}
    assert good["entity"]["n"] == 2 * len(records) and good["predicate"]["n"] == len(records)
    assert good["entity-instance"]["pointing"] == 1.0 and good["entity-instance"]["iou"] == 1.0
    assert good["entity"]["pointing"] == 1.0 and good["predicate"]["pointing"] == 1.0
    assert 0 < good["entity"]["chance"] < 0.5
    inverted = [1.0 - m for m in perfect]  # maximum outside the object
    bad = stored_map_localisation(write_store(tmp_path / "bad.zarr", records, inverted), records)
    assert bad["entity"]["pointing"] == 0.0 and bad["entity"]["iou"] < good["entity"]["iou"]


def test_entity_targets_every_instance_of_the_named_category(records):
    """Pointing game rule: a subject phrase's map peaking on another instance of the subject's category is a
    hit for ``entity`` and a miss for ``entity-instance``."""
    rec = records[0]
    s, o, _ = rec.relations[0]
    other = next(i for i in range(len(rec.segment_ids)) if i not in (s, o))
    cats = list(rec.category_ids)
    cats[other] = cats[s]  # a second instance of the subject's category
    twin = dataclasses.replace(rec, category_ids=cats)
    roles, trip = prompt_layout(twin)
    masks = torch.from_numpy(twin.load_panoptic())
    subject = [q for q in stored_queries(twin, roles, trip) if ROLE_SUBJECT in roles[q.tokens]
               and q.kind != "predicate"]
    by_kind = {q.kind: q for q in subject}
    assert torch.equal(by_kind["entity"].mask, masks[s] | masks[other])
    assert torch.equal(by_kind["entity-instance"].mask, masks[s])
    peak_on_twin = masks[other].float()[None].expand(len(by_kind["entity"].tokens), -1, -1)
    maps = torch.zeros(T, *masks.shape[1:])
    maps[by_kind["entity"].tokens] = peak_on_twin
    scores = summarise(score_queries(maps, subject))
    assert scores["entity"]["pointing"] == 1.0 and scores["entity-instance"]["pointing"] == 0.0


def test_store_and_dataset_that_disagree_are_refused(records, tmp_path):
    roles, trip = prompt_layout(records[0])
    trip[1] = 99
    with pytest.raises(ValueError, match=f"image '{records[0].image_id}': stored triplet 99"):
        stored_queries(records[0], roles, trip)
    store = write_store(tmp_path / "s.zarr", records, [np.ones((T, HA, HA))] * len(records))
    with pytest.raises(KeyError, match="is not in the dataset index"):
        stored_map_localisation(store, records[1:])


def box_records() -> list[IndexRecord]:
    """Box records (Visual Genome style: no panoptic PNG); regions are the rasterised boxes, no file read."""
    boxes = [[[2, 3, 30, 40], [20, 10, 60, 50.5], [0, 40, 64, 64]], [[10, 10, 20, 20], [30.2, 30.2, 30.4, 30.4]]]
    n = [len(b) for b in boxes]
    return [
        IndexRecord(str(100 + i), f"{100 + i}.jpg", "", HA, HA, [], list(range(n[i])), [True] * n[i], b, [[0, 1, 3]])
        for i, b in enumerate(boxes)
    ]


def test_box_records_are_scored_against_their_boxes(tmp_path):
    records = box_records()
    regions = [box_regions(r.bboxes, HA, HA) for r in records]
    roles, trip = prompt_layout(records[0])
    masks = {q.kind: q.mask for q in stored_queries(records[0], roles, trip)}
    assert torch.equal(masks["entity-instance"], torch.from_numpy(regions[0][1]))  # the object's box
    assert torch.equal(masks["predicate"], torch.from_numpy(regions[0][0] | regions[0][1]))
    perfect = [oracle_maps(r, *prompt_layout(r), regions=g) for r, g in zip(records, regions)]
    good = stored_map_localisation(write_store(tmp_path / "good.zarr", records, perfect), records)
    assert good["entity-instance"]["n"] == 4 and good["entity-instance"]["pointing"] == 1.0
    assert good["entity-instance"]["iou"] == 1.0 and good["predicate"]["pointing"] == 1.0
    shifted = [np.roll(m, 32, axis=(1, 2)) for m in perfect]  # peaks away from the boxes
    bad = stored_map_localisation(write_store(tmp_path / "bad.zarr", records, shifted), records)
    assert bad["entity-instance"]["iou"] < 1.0
