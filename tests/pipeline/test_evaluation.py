"""Evaluation settings (closed / OvR / OvD+R / spatial DR-NDR), chance baseline and metric artifacts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.classes import load_class_lists
from pipeline.evaluation import (
    SETTINGS,
    chance_baseline,
    compute_metrics,
    load_spatial_predicates,
    metrics_json,
    random_triplets,
    write_outputs,
)
from pipeline.tables import METRICS_SCHEMA, read_table

NAMES = ["left of", "right of", "beside", "holding"]  # C = 4
H = W = 30  # DR threshold: centre distance > 10 px


def box(x1: int, x2: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[0:10, x1:x2] = True
    return m


# segment 0 at x 0-5 (centre 2.5), 1 at x 24-30 (27), 2 at x 8-13 (10.5); labels 0, 1, 2
MASKS = np.stack([box(0, 5), box(24, 30), box(8, 13)])
LABELS = np.array([0, 1, 2])
# (0,1,p0): distant, novel object 1; (0,2,p1): near, all base; (2,1,p2): distant, novel predicate 2
IMAGE0 = {"masks": MASKS, "labels": LABELS, "relations": np.array([[0, 1, 0], [0, 2, 1], [2, 1, 2]])}
IMAGE1 = {"masks": MASKS, "labels": LABELS, "relations": np.array([[0, 2, 1]])}  # no novel triplet


def pred(*rows: tuple[int, int, int]) -> dict:
    trip = np.array([[s, o, p, 1.0 - 0.1 * r] for r, (s, o, p) in enumerate(rows)], dtype=np.float64)
    return {"masks": MASKS, "labels": LABELS, "triplets": trip.reshape(-1, 4)}


def metrics(gts, preds, **kw):
    args = {"num_predicates": 4, "predicate_names": NAMES, "ks": (1, 3)}
    return compute_metrics(gts, preds, **{**args, **kw})


def test_novel_predicate_triplet_counts_only_in_ovr():
    _, s = metrics([IMAGE0], [pred((2, 1, 2))], novel_predicates=[2])
    assert s["closed"]["R@3"] == pytest.approx(1 / 3)
    assert s["ovr"]["R@3"] == 1.0
    assert s["ovr"]["mR@3"] == 1.0  # mR over the novel predicates only, not over all 4
    assert s["closed"]["mR@3"] == pytest.approx(1 / 4)
    assert "ovdr" not in s and "spatial_dr" not in s
    _, s = metrics([IMAGE0], [pred((0, 1, 0), (0, 2, 1))], novel_predicates=[2])
    assert s["closed"]["R@3"] == pytest.approx(2 / 3)
    assert s["ovr"]["R@3"] == 0.0


def test_image_without_novel_triplets_drops_out_of_ovr():
    _, s = metrics([IMAGE0, IMAGE1], [pred((2, 1, 2)), pred((0, 2, 1))], novel_predicates=[2])
    assert s["closed"]["num_images"] == 2
    assert s["ovr"]["num_images"] == 1
    assert s["ovr"]["R@1"] == 1.0  # image 1 (recall 1 on its base triplet) does not enter OvR
    assert s["closed"]["R@1"] == pytest.approx((1 / 3 + 1) / 2)


def test_ovdr_includes_novel_object_triplets():
    _, s = metrics([IMAGE0], [pred((0, 1, 0))], novel_predicates=[2], novel_objects=[1])
    assert s["ovr"]["R@3"] == 0.0  # (0,1,p0) has a base predicate
    assert s["ovdr"]["R@3"] == 0.5  # GT: (0,1,p0) novel object, (2,1,p2) novel predicate; (0,2,p1) excluded
    assert s["ovdr"]["mR@3"] == pytest.approx(1 / 4)  # over all predicates
    _, s = metrics([IMAGE1], [pred((0, 2, 1))], novel_predicates=[2], novel_objects=[1])
    assert s["ovdr"]["num_images"] == 0 and np.isnan(s["ovdr"]["R@3"])


def test_spatial_split_on_hand_made_boxes():
    _, s = metrics([IMAGE0], [pred((0, 2, 1))], spatial_predicates=[0, 1, 2])
    assert s["spatial_dr"]["R@3"] == 0.0  # DR: (0,1,p0) and (2,1,p2), centres 24.5 and 16.5 px apart
    assert s["spatial_ndr"]["R@3"] == 1.0  # NDR: (0,2,p1), 8 px apart
    assert s["spatial_ndr"]["mR@3"] == pytest.approx(1 / 3)  # over the 3 spatial predicates
    _, s = metrics([IMAGE0], [pred((0, 1, 0), (2, 1, 2))], spatial_predicates=[0, 1])
    assert s["spatial_dr"]["R@3"] == 1.0  # (2,1,p2) is not spatial here: DR holds (0,1,p0) only
    assert s["spatial_dr"]["mR@3"] == 0.5
    assert s["spatial_ndr"]["R@3"] == 0.0
    # a wider image (threshold 30 px): nothing is distant
    _, s = metrics([IMAGE0], [pred((0, 2, 1))], spatial_predicates=[0, 1, 2], image_widths=[90])
    assert s["spatial_dr"]["num_images"] == 0
    assert s["spatial_ndr"]["R@3"] == pytest.approx(1 / 3)


def test_per_predicate_rows_and_bad_names():
    _, s = metrics([IMAGE0, IMAGE1], [pred((0, 2, 1)), pred((0, 2, 1))])
    rows = {r["name"]: r for r in s["per_predicate"]}
    assert rows["right of"]["recall@1"] == 1.0 and rows["right of"]["num_images"] == 2
    assert rows["left of"]["recall@3"] == 0.0 and rows["holding"]["num_images"] == 0
    with pytest.raises(ValueError, match="predicate_names"):
        compute_metrics([IMAGE0], [None], num_predicates=5, predicate_names=NAMES)


def test_rows_match_schema_and_round_trip(tmp_path):
    rows, s = metrics([IMAGE0, IMAGE1], [pred((2, 1, 2)), None], novel_predicates=[2], novel_objects=[1],
                      spatial_predicates=[0, 1, 2])
    assert {r["setting"] for r in rows} == set(SETTINGS) - {"ovd"}  # ovd: box ground truth only
    assert len(rows) == (len(SETTINGS) - 1) * 2 * 2  # settings x (R, mR) x ks
    assert all(set(r) == set(METRICS_SCHEMA.names) for r in rows)
    write_outputs(tmp_path / "ev", rows, s, None, tmp_path / "metrics.json", tmp_path / "pp.csv")
    back = read_table(tmp_path / "ev" / "metrics.parquet", METRICS_SCHEMA).to_pylist()
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        assert a["setting"] == b["setting"] and a["metric"] == b["metric"] and a["k"] == b["k"]
        assert a["num_images"] == b["num_images"]
        assert a["value"] == b["value"] or (np.isnan(a["value"]) and np.isnan(b["value"]))
    closed = {(r["metric"], r["k"]): r for r in back if r["setting"] == "closed"}
    assert closed[("R", 1)]["value"] == pytest.approx(1 / 3) and closed[("R", 1)]["num_images"] == 1


def test_outputs_json_csv_png(tmp_path):
    rows, s = metrics([IMAGE0], [pred((2, 1, 2))], novel_predicates=[2], spatial_predicates=[0, 1, 2],
                      image_widths=[90])
    chance = {"closed": {**s["closed"], "R@1": 0.0}}
    write_outputs(tmp_path / "ev", rows, s, None, tmp_path / "m" / "metrics.json", tmp_path / "pp.csv",
                  chance=chance)
    data = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert set(data) == {"closed", "ovr", "spatial_dr", "spatial_ndr", "chance"}
    assert data["closed"]["R@1"] == pytest.approx(1 / 3) and data["closed"]["num_images"] == 1
    assert data["spatial_dr"]["R@1"] is None  # NaN (no evaluated image) -> null
    assert data["chance"]["closed"]["R@1"] == 0.0
    assert "per_predicate" not in data
    table = read_table(tmp_path / "ev" / "metrics.parquet", METRICS_SCHEMA).to_pylist()
    assert any(r["setting"] == "chance_closed" for r in table)
    with open(tmp_path / "pp.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == ["predicate", "recall", "k", "num_images", "predicate_id"]
    assert [r["predicate"] for r in csv_rows] == NAMES
    assert float(csv_rows[2]["recall"]) == 1.0 and csv_rows[2]["k"] == "3"
    with Image.open(tmp_path / "ev" / "per_predicate_recall.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert not list(tmp_path.rglob("*.tmp"))


def test_metrics_json_replaces_nan():
    out = metrics_json({"closed": {"R@20": float("nan"), "mR@20": np.float64(0.5), "num_images": np.int64(0)},
                        "per_predicate": []})
    assert out == {"closed": {"R@20": None, "mR@20": 0.5, "num_images": 0}}
    json.dumps(out, allow_nan=False)
    assert metrics_json({"closed": {"R@20": 0.06733476973251841}})["closed"]["R@20"] == 0.067335  # not 16 digits


def test_random_triplets_distinct_and_valid():
    rng = np.random.default_rng(0)
    t = random_triplets(4, 50, 3, rng)
    assert t.shape == (36, 4)  # capped at 4*3*3 distinct triplets
    assert np.all(t[:, 0] != t[:, 1]) and len({tuple(r) for r in t[:, :3]}) == 36
    assert np.all(np.diff(t[:, 3]) <= 0)
    assert random_triplets(1, 10, 3, rng).shape == (0, 4)


def test_chance_baseline_deterministic_and_below_perfect():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, H, W), dtype=bool)
    for i in range(6):
        masks[i, 5 * i : 5 * i + 5, :] = True
    labels = np.arange(6)
    rel = np.array([[s, o, int(rng.integers(4))] for s in range(6) for o in range(6) if s != o][:10])
    gts = [{"masks": masks, "labels": labels, "relations": rel}] * 3
    perfect = [{"masks": masks, "labels": labels, "triplets": np.c_[rel, np.ones(len(rel))]}] * 3
    kw = {"num_predicates": 4, "predicate_names": NAMES, "ks": (5, 10)}
    _, best = compute_metrics(gts, perfect, **kw)
    a = chance_baseline(gts, perfect, rng_seed=3, max_triplets=100, **kw)
    b = chance_baseline(gts, perfect, rng_seed=3, max_triplets=100, **kw)
    c = chance_baseline(gts, perfect, rng_seed=4, max_triplets=100, **kw)
    assert best["closed"]["R@10"] == 1.0
    assert a == b
    assert a["closed"]["R@10"] < 0.5 and a["closed"]["num_images"] == 3
    assert a["closed"] != c["closed"] or a["per_predicate"] != c["per_predicate"]
    # a missing prediction stays missing (skipped like the model's)
    d = chance_baseline(gts, [None, *perfect[1:]], rng_seed=3, max_triplets=5, **kw)
    assert d["closed"]["num_images"] == 2 and d["closed"]["num_skipped"] == 1
    # several draws: R@K / mR@K are the mean of consecutive draws of one generator; counts unchanged
    many = chance_baseline(gts, perfect, rng_seed=3, max_triplets=100, num_draws=4, **kw)
    rng = np.random.default_rng(3)
    draws = []
    for _ in range(4):
        rows = [{**p, "triplets": random_triplets(6, len(rel), 4, rng)} for p in perfect]
        draws.append(compute_metrics(gts, rows, **kw)[1]["closed"])
    for key in ("R@5", "R@10", "mR@5", "mR@10"):
        assert many["closed"][key] == pytest.approx(np.mean([d[key] for d in draws]))
    assert many["closed"]["R@10"] != a["closed"]["R@10"] and many["closed"]["num_images"] == 3
    with pytest.raises(ValueError, match="num_draws"):
        chance_baseline(gts, perfect, rng_seed=3, max_triplets=100, num_draws=0, **kw)


def test_load_spatial_predicates():
    psg = load_class_lists("psg").predicate_classes
    ids = load_spatial_predicates("psg", psg)
    assert psg.index("over") in ids and psg.index("standing on") in ids and psg.index("eating") not in ids
    syn = load_class_lists("synthetic").predicate_classes
    assert load_spatial_predicates("synthetic", syn) == list(range(len(syn)))
    shuffled = list(reversed(syn))
    assert [shuffled[i] for i in load_spatial_predicates("synthetic", shuffled)] == list(reversed(syn))
    with pytest.raises(ValueError, match="not in predicate_names"):
        load_spatial_predicates("synthetic", syn[:-1])
    with pytest.raises(ValueError, match="source"):
        load_spatial_predicates("coco", syn)


# Box ground truth (VG protocol): the same three regions as boxes, xyxy pixels (exclusive ends)
BOXES = np.array([[0, 0, 5, 10], [24, 0, 30, 10], [8, 0, 13, 10]], dtype=np.float64)
VG0 = {"boxes": BOXES, "labels": LABELS, "relations": IMAGE0["relations"]}
VG1 = {"boxes": BOXES, "labels": LABELS, "relations": IMAGE1["relations"]}


def box_pred(*rows: tuple[int, int, int], boxes: np.ndarray = BOXES) -> dict:
    return {**{k: v for k, v in pred(*rows).items() if k != "masks"}, "boxes": boxes}


def test_box_ground_truth_uses_the_vg_rules_and_ovsgtr_recalls():
    gts = [VG0, VG1]
    preds = [box_pred((2, 1, 2), (0, 1, 0)), None]
    _, s = metrics(gts, preds, novel_predicates=[2], novel_objects=[1, 2], image_widths=[W, W])
    # VG counts an image without prediction as recall 0 (PSG would skip it)
    assert s["closed"]["R@3"] == pytest.approx((2 / 3 + 0) / 2) and s["closed"]["num_skipped"] == 1
    assert s["ovr"]["R@3"] == 1.0 and "mR@3" not in s["ovr"]  # novel relation: (2,1,2) only
    assert s["ovd"]["R@3"] == 1.0  # novel object: subject and object both novel -> (2,1,2) only
    assert s["ovd"]["num_images"] == 1 and "ovdr" not in s
    _, psg = metrics([IMAGE0, IMAGE1], [pred((2, 1, 2), (0, 1, 0)), None], novel_predicates=[2])
    assert psg["closed"]["R@3"] == pytest.approx(2 / 3)  # the PSG evaluator skips the empty image


def test_box_iou_uses_the_plus_one_pixel_convention():
    # a predicted subject box 1 px narrower: plain IoU 4/5 ... with +1 px 5/6; both pass 0.8, only +1 px 0.82
    shifted = BOXES.copy()
    shifted[0] = [0, 0, 4, 10]
    _, s = metrics([VG1], [box_pred((0, 2, 1), boxes=shifted)], image_widths=[W], iou_thr=0.82)
    assert s["closed"]["R@1"] == 1.0
    _, s = metrics([VG1], [box_pred((0, 2, 1), boxes=shifted)], image_widths=[W], iou_thr=0.84)
    assert s["closed"]["R@1"] == 0.0


def test_box_spatial_split_uses_box_centres_and_needs_widths():
    _, s = metrics([VG0], [box_pred((0, 1, 0))], spatial_predicates=[0, 1, 2], image_widths=[W])
    assert s["spatial_dr"]["R@3"] == pytest.approx(1 / 2)  # (0,1) and (2,1) are distant; one found
    assert s["spatial_ndr"]["R@3"] == 0.0
    with pytest.raises(ValueError, match="image_widths"):
        metrics([VG0], [box_pred((0, 1, 0))], spatial_predicates=[0])
    with pytest.raises(ValueError, match="mixes"):
        metrics([VG0, IMAGE1], [None, None])


def test_box_chance_baseline_and_protocol_metadata(tmp_path):
    kw = {"num_predicates": 4, "predicate_names": NAMES, "ks": (1, 3), "image_widths": [W]}
    perfect = [box_pred((0, 1, 0), (0, 2, 1), (2, 1, 2))]
    rows, summary = compute_metrics([VG0], perfect, **kw)
    chance = chance_baseline([VG0], perfect, rng_seed=0, max_triplets=3, **kw)
    assert summary["closed"]["R@3"] == 1.0 and chance["closed"]["R@3"] < 1.0
    write_outputs(tmp_path, rows, summary, None, tmp_path / "m.json", tmp_path / "p.csv", chance=chance,
                  protocol="vg")
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "metrics.parquet").metadata[b"protocol"] == b"vg"
    with pytest.raises(ValueError, match="protocol"):
        write_outputs(tmp_path, rows, summary, None, tmp_path / "m.json", tmp_path / "p.csv", protocol="coco")
