"""The synthetic generator: determinism, layout, and relations that are geometrically true.

The geometric checks below are written independently of ``pipeline.datasets.spatial``: they read the saved
panoptic PNG and the boxes of psg.json and test each predicate's documented rule.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.classes import load_class_lists
from pipeline.datasets.panoptic import read_image, read_panoptic_png
from pipeline.datasets.synthetic import LAYOUTS, STUFF_PREDICATE, THING_STYLES, generate_dataset, generate_scene

CLASSES = load_class_lists("synthetic")


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tiny_dataset, tiny_config, tmp_path):
    TINY = tiny_config
    generate_dataset(tmp_path / "again", seed=3, progress=False, **TINY)
    generate_dataset(tmp_path / "other", seed=4, progress=False, **TINY)
    first, again, other = _files(tiny_dataset), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert len(first) == 1 + 2 * (TINY["num_train"] + TINY["num_test"])
    assert first == again
    assert first.keys() == other.keys()
    assert sum(first[k] != other[k] for k in first) >= len(first) - 1


def test_images_do_not_depend_on_dataset_size(tiny_dataset, tmp_path):
    generate_dataset(tmp_path / "small", seed=3, num_train=2, num_test=1, image_size=64, progress=False)
    small = _files(tmp_path / "small")
    big = _files(tiny_dataset)
    for name, data in small.items():
        if name != "psg.json":
            assert big[name] == data, name


def test_psg_layout(tiny_dataset, tiny_config):
    psg = load_json(tiny_dataset / "psg.json")
    assert psg["thing_classes"] == list(CLASSES.thing_classes)
    assert psg["stuff_classes"] == list(CLASSES.stuff_classes)
    assert psg["predicate_classes"] == list(CLASSES.predicate_classes)
    assert len(psg["data"]) == 10 and len(psg["test_image_ids"]) == 4
    assert set(psg["test_image_ids"]) <= {r["image_id"] for r in psg["data"]}
    for rec in psg["data"]:
        assert isinstance(rec["image_id"], str)
        assert len(rec["segments_info"]) == len(rec["annotations"])
        ids = read_panoptic_png(tiny_dataset / rec["pan_seg_file_name"])
        assert read_image(tiny_dataset / rec["file_name"]).shape == (rec["height"], rec["width"], 3) == (64, 64, 3)
        assert set(np.unique(ids)) == {s["id"] for s in rec["segments_info"]}  # no void, nothing extra
        nthings = sum(s["isthing"] for s in rec["segments_info"])
        assert 1 <= nthings <= tiny_config["max_objects"]
        for seg, ann in zip(rec["segments_info"], rec["annotations"]):
            mask = ids == seg["id"]
            ys, xs = np.nonzero(mask)
            assert seg["area"] == mask.sum() and seg["iscrowd"] == 0
            assert seg["isthing"] == (seg["category_id"] < len(CLASSES.thing_classes))
            assert ann == {"bbox": [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], "bbox_mode": 0,
                           "category_id": seg["category_id"]}  # fmt: skip


def test_styles_cover_the_shipped_class_lists():
    assert list(THING_STYLES) == list(CLASSES.thing_classes)
    assert set(STUFF_PREDICATE) == set(CLASSES.stuff_classes) == {n for layout in LAYOUTS for n in layout}
    assert set(STUFF_PREDICATE.values()) <= set(CLASSES.predicate_classes)
    assert len({colour for _, colour in THING_STYLES.values()}) == len(THING_STYLES)


@pytest.mark.parametrize(("size", "lo", "hi"), [(32, 1, 2), (128, 12, 12)])
def test_extreme_sizes_and_counts(size, lo, hi):
    scene = generate_scene(np.random.default_rng(0), size, lo, hi)
    assert scene.image.shape == (size, size, 3) and scene.id_map.shape == (size, size)
    assert 1 <= sum(s["isthing"] for s in scene.segments_info) <= hi
    assert len(scene.relations) <= 32


# ------------------------------------------------------------------------------------ geometric truth
def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = m[y - dy, x - dx]`` with zero fill."""
    h, w = m.shape
    p = np.pad(m, 1)
    return p[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def _touch(a, b) -> bool:
    return any(np.any(_shift(a, dy, dx) & b) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)))


def _centre(b):
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])


def _check(rel, ids, rec, width):
    s, o, p = rel
    name = CLASSES.predicate_classes[p]
    seg = rec["segments_info"]
    ms, mo = ids == seg[s]["id"], ids == seg[o]["id"]
    bs, bo = (np.array(rec["annotations"][k]["bbox"], dtype=float) for k in (s, o))
    d = _centre(bs) - _centre(bo)
    things = seg[s]["isthing"], seg[o]["isthing"]
    if things == (1, 0):  # thing -> stuff: majority stuff right below the thing, predicate from its class
        assert name == STUFF_PREDICATE[CLASSES.object_classes[seg[o]["category_id"]]]
        below = ids[_shift(ms, 1, 0) & ~ms]
        counts = Counter(v for v in below.tolist() if v in {x["id"] for x in seg if not x["isthing"]})
        assert counts[seg[o]["id"]] == max(counts.values())
        return
    if things == (0, 0):
        assert name == "above" and np.any(_shift(ms, 1, 0) & mo) and d[1] < 0
        return
    assert things == (1, 1)
    if name == "inside":
        ring = (_shift(ms, 1, 0) | _shift(ms, -1, 0) | _shift(ms, 0, 1) | _shift(ms, 0, -1)) & ~ms
        assert not (ms[0].any() or ms[-1].any() or ms[:, 0].any() or ms[:, -1].any())
        assert np.all(mo[ring])
    elif name == "in front of":
        assert s > o and _touch(ms, mo)  # drawn later (segments are back to front) and touching
    elif name == "on":
        assert np.any(_shift(ms, 1, 0) & mo) and bs[3] <= bo[1] + 0.3 * (bo[3] - bo[1]) and d[1] < 0
    elif name == "beside":
        rows = min(bs[3], bo[3]) - max(bs[1], bo[1])
        gap = max(bo[0] - bs[2], bs[0] - bo[2])
        assert abs(d[0]) >= abs(d[1]) and rows >= 0.5 * min(bs[3] - bs[1], bo[3] - bo[1])
        assert gap <= max(2, round(0.04 * width))
    elif name in ("left of", "right of"):
        assert abs(d[0]) >= abs(d[1]) and (d[0] < 0) == (name == "left of") and abs(d[0]) >= 0.05 * width
    elif name in ("above", "below"):
        assert abs(d[1]) > abs(d[0]) and (d[1] < 0) == (name == "above") and abs(d[1]) >= 0.05 * width
    elif name == "far from":
        assert np.hypot(*d) > width / 3
    else:
        raise AssertionError(f"unexpected predicate {name}")


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    generate_dataset(root, seed=11, num_train=50, num_test=10, image_size=80, progress=False)
    return root


def test_every_relation_is_geometrically_true(many):
    psg = load_json(many / "psg.json")
    seen, far, near = Counter(), 0, 0
    for rec in psg["data"]:
        ids = read_panoptic_png(many / rec["pan_seg_file_name"])
        pairs: dict[frozenset, list[str]] = {}
        for rel in rec["relations"]:
            _check(rel, ids, rec, rec["width"])
            name = CLASSES.predicate_classes[rel[2]]
            seen[name] += 1
            if all(rec["segments_info"][k]["isthing"] for k in rel[:2]):
                pairs.setdefault(frozenset(rel[:2]), []).append(name)
                boxes = [np.array(rec["annotations"][k]["bbox"], float) for k in rel[:2]]
                dist = np.hypot(*(_centre(boxes[0]) - _centre(boxes[1])))
                far, near = far + (dist > rec["width"] / 3), near + (dist <= rec["width"] / 3)
        for names in pairs.values():  # one rule per thing pair; "far from" only beside a direction
            assert len(names) == 1 or (len(names) == 2 and names[1] == "far from"), names
    assert set(seen) == set(CLASSES.predicate_classes), seen
    assert far > 20 and near > 20


def test_things_are_big_enough(many):
    psg = load_json(many / "psg.json")
    for rec in psg["data"]:
        for seg, ann in zip(rec["segments_info"], rec["annotations"]):
            if seg["isthing"]:
                x1, y1, x2, y2 = ann["bbox"]
                assert max(x2 - x1, y2 - y1) >= 8 and seg["area"] >= 16
