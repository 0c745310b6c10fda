"""The VG-150 reader (pipeline/datasets/vg.py) and the synthetic VG-format writer (synthetic_vg.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.datasets.classes import read_data_file
from pipeline.datasets.psg import DatasetError
from pipeline.datasets.synthetic import generate_scene
from pipeline.datasets.synthetic_vg import VGFiles, encode_boxes, generate_vg_dataset, scene_boxes
from pipeline.datasets.vg import VGReader, load_image_data, load_vg_dicts, read_vg_split

SEED, NUM_TRAIN, NUM_TEST, SIZE = 3, 6, 4, 64
NO_FILTERS = {"num_val": 0, "filter_duplicate_rels": False, "filter_non_overlap": False}


@pytest.fixture(scope="module")
def tiny_vg(tmp_path_factory) -> Path:
    """A tiny synthetic VG-format triple (6 train + 4 test, 64x64 JPEG). Read-only."""
    root = tmp_path_factory.mktemp("vg") / "vg"
    generate_vg_dataset(root, seed=SEED, num_train=NUM_TRAIN, num_test=NUM_TEST, image_size=SIZE, progress=False)
    return root


@pytest.fixture
def vg_copy(tiny_vg, tmp_path) -> Path:
    dst = tmp_path / "vg"
    shutil.copytree(tiny_vg, dst)
    return dst


def files(root: Path) -> VGFiles:
    return VGFiles(root / "VG-SGG.h5", root / "VG-SGG-dicts.json", root / "image_data.json", root / "VG_100K")


def read(root: Path, split: str, **kw):
    f = files(root)
    return read_vg_split(f.h5, f.dicts, f.image_data, f.image_root, split, **kw)


def scene(k: int, i: int):
    return generate_scene(np.random.default_rng([SEED, k, i]), SIZE, 2, 5)


# --- writer -----------------------------------------------------------------------------------------------


def test_h5_keys_dtypes_and_encoding_match_the_release(tiny_vg):
    with h5py.File(files(tiny_vg).h5) as h5:
        n_img, n_obj, n_rel = h5["split"].shape[0], h5["labels"].shape[0], h5["predicates"].shape[0]
        expected = {
            "labels": ((n_obj, 1), "int64"), "boxes_1024": ((n_obj, 4), "int32"), "boxes_512": ((n_obj, 4), "int32"),
            "active_object_mask": ((n_obj, 1), "bool"), "predicates": ((n_rel, 1), "int64"),
            "relationships": ((n_rel, 2), "int32"), "split": ((n_img,), "int32"),
            **{f"img_to_{a}_{b}": ((n_img,), "int32") for a in ("first", "last") for b in ("box", "rel")},
        }  # fmt: skip
        assert set(h5) == set(expected)
        for key, (shape, dtype) in expected.items():
            assert h5[key].shape == shape and h5[key].dtype == np.dtype(dtype), key
        assert n_img == NUM_TRAIN + NUM_TEST
        np.testing.assert_array_equal(h5["split"][:], [0] * NUM_TRAIN + [2] * NUM_TEST)
        assert h5["labels"][:].min() >= 1 and h5["predicates"][:].min() >= 1  # 1-based
        # image 0: boxes_1024 = (cx, cy, w, h) of the scene's boxes at scale 1024 / 64 = 16
        boxes, _, rel = scene_boxes(scene(0, 0))
        f0, l0 = h5["img_to_first_box"][0], h5["img_to_last_box"][0]
        enc = h5["boxes_1024"][f0 : l0 + 1]
        np.testing.assert_array_equal(enc[:, 2:], (boxes[:, 2:] - boxes[:, :2]) * 16)
        np.testing.assert_array_equal(enc[:, :2], boxes[:, :2] * 16 + enc[:, 2:] // 2)
        np.testing.assert_array_equal(h5["boxes_512"][f0 : l0 + 1], enc // 2)
        r0 = h5["img_to_first_rel"][0]
        np.testing.assert_array_equal(h5["relationships"][r0 : r0 + len(rel)], rel[:, :2] + f0)  # global indices
    dicts = json.loads(files(tiny_vg).dicts.read_text())
    assert set(dicts) == {
        "idx_to_label",
        "label_to_idx",
        "idx_to_predicate",
        "predicate_to_idx",
        "object_count",
        "predicate_count",
    }
    assert list(dicts["idx_to_label"])[:3] == ["1", "2", "3"] and dicts["label_to_idx"][dicts["idx_to_label"]["1"]] == 1
    data = json.loads(files(tiny_vg).image_data.read_text())
    assert len(data) == NUM_TRAIN + NUM_TEST
    assert set(data[0]) == {"width", "height", "image_id", "url", "coco_id", "flickr_id"}
    assert all((files(tiny_vg).image_root / f"{d['image_id']}.jpg").is_file() for d in data)


def test_encode_boxes_follows_the_release_writer():
    # scale 1024 / 64 = 16: x = 16, y = 32, w = 64, h = 112 -> cx = 16 + 32, cy = 32 + 56
    np.testing.assert_array_equal(encode_boxes(np.array([[1, 2, 5, 9]]), 64, 64), [[48, 88, 64, 112]])
    # odd width in the frame: cx = x + floor(w / 2); image 100 wide -> scale 10.24
    np.testing.assert_array_equal(encode_boxes(np.array([[0, 0, 0.4, 1]]), 100, 50), [[2, 5, 5, 11]])
    # clamped to the frame: x <= 1022, x + w <= 1024
    np.testing.assert_array_equal(encode_boxes(np.array([[63.99, 0, 64, 64]]), 64, 64), [[1022, 512, 1, 1024]])
    np.testing.assert_array_equal(encode_boxes(np.array([[60, 0, 70, 64]]), 64, 64), [[992, 512, 64, 1024]])


def test_same_seed_same_bytes(tmp_path):
    kw = {"num_train": 2, "num_test": 1, "image_size": 64, "progress": False}
    a = generate_vg_dataset(tmp_path / "a", seed=5, **kw)
    b = generate_vg_dataset(tmp_path / "b", seed=5, **kw)
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert len(names) == 3 + 3
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    generate_vg_dataset(tmp_path / "a", seed=5, **kw)  # rewriting in place gives the same bytes too
    assert a.h5.read_bytes() == b.h5.read_bytes()
    c = generate_vg_dataset(tmp_path / "c", seed=6, **kw)
    assert c.h5.read_bytes() != a.h5.read_bytes()


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        generate_vg_dataset(tmp_path, 0, 1, 1, image_format="gif", progress=False)
    with pytest.raises(ValueError, match="min_objects"):
        generate_vg_dataset(tmp_path, 0, 1, 1, min_objects=3, max_objects=2, progress=False)


# --- round trip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["jpg", "png"])
def test_round_trip_records_equal_the_scenes(tmp_path, image_format):
    root = tmp_path / "vg"
    generate_vg_dataset(root, SEED, NUM_TRAIN, NUM_TEST, image_size=SIZE, image_format=image_format, progress=False)
    for split, k, n in (("train", 0, NUM_TRAIN), ("test", 1, NUM_TEST)):
        out = read(root, split, image_ext=image_format, **NO_FILTERS)
        assert out.skipped == [] and len(out.records) == n
        for i, rec in enumerate(out.records):
            sc = scene(k, i)
            boxes, labels, relations = scene_boxes(sc)
            assert rec.image_id == str((k + 1) * 1_000_000 + i) and rec.index == k * NUM_TRAIN + i
            assert (rec.width, rec.height, rec.split) == (SIZE, SIZE, split)
            assert rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int64
            np.testing.assert_array_equal(rec.boxes, boxes)
            np.testing.assert_array_equal(rec.labels, labels)
            np.testing.assert_array_equal(rec.relations, relations)
            image = rec.load_image()
            assert image.shape == (SIZE, SIZE, 3)
            if image_format == "png":
                np.testing.assert_array_equal(image, sc.image)
            else:  # JPEG quality 95, 4:4:4
                assert np.abs(image.astype(int) - sc.image).mean() < 6


def test_val_is_the_first_kept_train_images(tiny_vg):
    val = read(tiny_vg, "val", num_val=2)
    train = read(tiny_vg, "train", num_val=2, filter_duplicate_rels=False, filter_non_overlap=False)
    assert [r.index for r in val.records] == [0, 1]
    assert [r.index for r in train.records] == [2, 3, 4, 5]
    # val keeps every relation: no train-only filter
    np.testing.assert_array_equal(val.records[0].relations, scene_boxes(scene(0, 0))[2])


def test_images_without_relations_or_boxes_are_not_selected(vg_copy):
    with h5py.File(files(vg_copy).h5, "r+") as h5:
        h5["img_to_first_rel"][1] = -1
        h5["img_to_last_rel"][1] = -1
        h5["img_to_first_box"][2] = -1
        h5["img_to_last_box"][2] = -1
        h5["img_to_first_rel"][2] = -1
        h5["img_to_last_rel"][2] = -1
    assert [r.index for r in read(vg_copy, "train", **NO_FILTERS).records] == [0, 3, 4, 5]
    kept = read(vg_copy, "train", filter_empty_rels=False, **NO_FILTERS).records
    assert [r.index for r in kept] == [0, 1, 3, 4, 5] and kept[1].relations.shape == (0, 3)
    assert read(vg_copy, "val", num_val=2).stats["images"] == 2  # the first two *kept* images: 0 and 3
    assert [r.index for r in read(vg_copy, "val", num_val=2).records] == [0, 3]


def test_train_filters_are_seeded_and_train_only(tiny_vg):
    raw = {r.index: r for r in read(tiny_vg, "train", **NO_FILTERS).records}
    dup = read(tiny_vg, "train", num_val=0, filter_non_overlap=False, seed=1)
    assert dup.stats["relations_removed_duplicate"] > 0  # the synthetic 'far from' pairs have two predicates
    for rec in dup.records:
        pairs = [tuple(p) for p in rec.relations[:, :2].tolist()]
        assert len(pairs) == len(set(pairs))  # one predicate per pair
        assert {tuple(r) for r in rec.relations.tolist()} <= {tuple(r) for r in raw[rec.index].relations.tolist()}
        assert set(pairs) == {tuple(p) for p in raw[rec.index].relations[:, :2].tolist()}
    again = read(tiny_vg, "train", num_val=0, filter_non_overlap=False, seed=1)
    assert all(np.array_equal(a.relations, b.relations) for a, b in zip(dup.records, again.records))

    over = read(tiny_vg, "train", num_val=0, filter_duplicate_rels=False)
    assert over.stats["relations_removed_non_overlap"] > 0
    for rec in over.records:
        b = rec.boxes.astype(np.float64) * 16  # back to the 1024 frame
        s, o = b[rec.relations[:, 0]], b[rec.relations[:, 1]]
        inter = np.clip(np.minimum(s[:, 2:], o[:, 2:]) - np.maximum(s[:, :2], o[:, :2]) + 1, 0, None).prod(1)
        assert (inter > 0).all()
    dropped = over.stats.get("images_dropped_non_overlap", 0)
    assert len(over.records) + dropped == NUM_TRAIN
    # test keeps every relation, whatever the filter arguments
    test = read(tiny_vg, "test")
    for i, rec in enumerate(test.records):
        np.testing.assert_array_equal(rec.relations, scene_boxes(scene(1, i))[2])


def test_block_reads_give_the_same_records(tiny_vg):
    f = files(tiny_vg)
    with VGReader(f.h5, f.dicts, f.image_data, f.image_root, block_rows=3) as small:
        a = list(small.iter_split("train", **NO_FILTERS))
    b = read(tiny_vg, "train", **NO_FILTERS).records
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.relations, y.relations)


def _write_triple(root: Path, width: int, height: int, boxes_1024, relations, predicates) -> VGFiles:
    """A hand-made one-image triple (labels 1..N) with a blank image of the given size."""
    from PIL import Image

    n = len(boxes_1024)
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (width, height)).save(root / "img" / "7.jpg")
    with h5py.File(root / "t.h5", "w") as h5:
        h5["labels"] = np.arange(1, n + 1).reshape(-1, 1)
        h5["boxes_1024"] = np.asarray(boxes_1024, dtype=np.int32)
        h5["predicates"] = np.asarray(predicates).reshape(-1, 1)
        h5["relationships"] = np.asarray(relations, dtype=np.int32).reshape(-1, 2)
        for key, value in (
            ("img_to_first_box", 0),
            ("img_to_last_box", n - 1),
            ("img_to_first_rel", 0),
            ("img_to_last_rel", len(predicates) - 1),
            ("split", 2),
        ):
            h5[key] = np.array([value], dtype=np.int32)
    names = {str(k): f"c{k}" for k in range(1, 6)}
    (root / "d.json").write_text(json.dumps({"idx_to_label": names, "idx_to_predicate": names}))
    (root / "i.json").write_text(
        json.dumps(
            [
                {"image_id": 1592, "width": 1, "height": 1},  # corrupt: dropped
                {"image_id": 7, "width": width, "height": height},
            ]
        )
    )
    return VGFiles(root / "t.h5", root / "d.json", root / "i.json", root / "img")


def test_boxes_scaled_to_original_pixels_clipped_and_zero_based(tmp_path):
    # 200 x 100 image: scale max(W, H) / 1024 = 200 / 1024
    f = _write_triple(
        tmp_path,
        200,
        100,
        [[512, 256, 512, 256], [512, 500, 200, 100], [100, 51, 201, 100]],
        [[0, 1], [1, 0], [0, 1], [2, 2]],
        [3, 1, 3, 5],
    )
    rec = read_vg_split(f.h5, f.dicts, f.image_data, f.image_root, "test").records[0]
    s = 200 / 1024
    np.testing.assert_allclose(
        rec.boxes, [[50, 25, 150, 75], [412 * s, 450 * s, 612 * s, 100], [0, 1 * s, 200.5 * s, 101 * s]], rtol=1e-6
    )
    np.testing.assert_array_equal(rec.labels, [0, 1, 2])
    np.testing.assert_array_equal(rec.relations, [[0, 1, 2], [1, 0, 0], [0, 1, 2], [2, 2, 4]])  # duplicates kept
    assert (rec.width, rec.height, rec.file_name) == (200, 100, "7.jpg")


def test_train_non_overlap_uses_the_plus1_iou_in_the_1024_frame(tmp_path):
    # boxes 0 and 1 touch (x2 of 0 == x1 of 1): +1-pixel IoU > 0 -> kept; box 2 is 1 unit away -> dropped
    f = _write_triple(
        tmp_path,
        100,
        100,
        [[50, 50, 100, 100], [150, 50, 100, 100], [251, 50, 100, 100]],
        [[0, 1], [1, 2], [0, 1]],
        [1, 2, 1],
    )
    with h5py.File(f.h5, "r+") as h5:
        h5["split"][0] = 0
    out = read_vg_split(f.h5, f.dicts, f.image_data, f.image_root, "train", num_val=0, filter_duplicate_rels=False)
    np.testing.assert_array_equal(out.records[0].relations, [[0, 1, 0], [0, 1, 0]])
    assert out.stats["relations_removed_non_overlap"] == 1


# --- validation -------------------------------------------------------------------------------------------


def _set(key: str, where, value):
    def change(root: Path) -> None:
        with h5py.File(files(root).h5, "r+") as h5:
            h5[key][where] = value

    return change


def _replace(key: str, fn):
    def change(root: Path) -> None:
        with h5py.File(files(root).h5, "r+") as h5:
            value = fn(h5[key][:])
            del h5[key]
            if value is not None:
                h5[key] = value

    return change


def _image_data(fn):
    def change(root: Path) -> None:
        path = files(root).image_data
        path.write_text(json.dumps(fn(json.loads(path.read_text()))))

    return change


def _image_file(fn):
    def change(root: Path) -> None:
        fn(files(root).image_root / "1000000.jpg")

    return change


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _outside_image(data):
    data[0]["height"] = 20  # the frame still spans 64 px, so boxes below y = 20 lie outside the image
    return data


RECORD_ERRORS = [
    (_set("img_to_last_box", 0, 10_000), "box range out of bounds"),
    (_set("img_to_last_box", 0, -1), "box range has one end -1"),
    (_set("img_to_first_box", 0, 4_000), "range is negative or reversed"),
    (_set("img_to_last_rel", 0, 10_000), "rel range out of bounds"),
    (_set("img_to_first_rel", 0, -1), "rel range has one end -1"),
    (_set("relationships", (0, 1), 40), "refers to a box outside the image's box range"),
    (_set("labels", (0, 0), 0), "outside the vocabulary 1..16"),
    (_set("labels", (1, 0), 17), "outside the vocabulary 1..16"),
    (_set("predicates", (0, 0), 11), "outside the vocabulary 1..10"),
    (_set("boxes_1024", (0, 2), 0), "has width or height <= 0"),
    (_set("boxes_1024", (1, 3), -3), "has width or height <= 0"),
    (_set("boxes_1024", (0, 0), 1500), "outside the 1024 frame"),
    (_image_file(lambda p: p.unlink()), "image file missing"),
    (_image_file(_truncate), "image unreadable"),
    (_image_data(lambda d: [{**d[0], "width": 70}, *d[1:]]), "differs from image_data.json's 70x64"),
    (_image_data(lambda d: [{**d[0], "height": "64"}, *d[1:]]), "positive integer 'width' / 'height'"),
]  # fmt: skip


@pytest.mark.parametrize(("corrupt", "match"), RECORD_ERRORS)
def test_record_errors_name_the_image_index_and_reason(vg_copy, corrupt, match):
    corrupt(vg_copy)
    with pytest.raises(DatasetError, match=match) as err:
        read(vg_copy, "val", num_val=2)
    assert err.value.image_id == "1000000" and "h5 index 0" in err.value.reason
    assert str(err.value).startswith("image 1000000: h5 index 0: ")
    assert err.value.path in (str(files(vg_copy).h5), str(files(vg_copy).image_root / "1000000.jpg"))
    # on_error="skip": the image is reported, the others are read
    out = read(vg_copy, "val", num_val=2, on_error="skip")
    assert [r.index for r in out.records] == [1]
    assert out.skipped == [{"image_id": "1000000", "index": 0, "reason": err.value.reason, "file": err.value.path}]
    assert out.stats["images_skipped"] == 1


def test_box_outside_the_image_is_an_error(vg_copy):
    _image_data(_outside_image)(vg_copy)
    with pytest.raises(DatasetError, match=r"lies outside the 64x20 image"):
        read(vg_copy, "val", num_val=1, check_images=False)


def test_size_mismatch_use_file(vg_copy):
    _image_data(lambda d: [{**d[0], "width": 70, "height": 90}, *d[1:]])(vg_copy)
    out = read(vg_copy, "val", num_val=2, size_mismatch="use_file")
    assert (out.records[0].width, out.records[0].height) == (64, 64) and out.stats["size_from_file"] == 1
    np.testing.assert_array_equal(out.records[0].boxes, scene_boxes(scene(0, 0))[0])


def test_check_images_false_needs_no_images(vg_copy):
    shutil.rmtree(files(vg_copy).image_root)
    assert len(read(vg_copy, "test", check_images=False).records) == NUM_TEST
    with pytest.raises(DatasetError, match="image file missing"):
        read(vg_copy, "test")


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_replace("predicates", lambda v: None), r"h5 lacks datasets \['predicates'\]"),
        (_replace("labels", lambda v: v[:-1]), "inconsistent lengths"),
        (_replace("img_to_first_rel", lambda v: v[:-1]), "inconsistent lengths"),
        (_replace("relationships", lambda v: v[:-2]), "inconsistent lengths"),
        (_replace("boxes_1024", lambda v: v[:, :3]), r"'boxes_1024' must have shape \[N, 4\]"),
        (_replace("boxes_1024", lambda v: v.astype(np.float32)), "must hold integers"),
        (_image_data(lambda d: d[:-1]), "image_data.json has 9 entries"),
    ],
)  # fmt: skip
def test_file_level_errors(vg_copy, corrupt, match):
    corrupt(vg_copy)
    with pytest.raises(DatasetError, match=match) as err:
        read(vg_copy, "test")
    assert err.value.image_id is None and err.value.path is not None


def test_corrupt_release_images_are_dropped_from_image_data(vg_copy):
    _image_data(lambda d: [{"image_id": 1592, "width": 5, "height": 5}, *d[:3], {"image_id": 4617}, *d[3:]])(vg_copy)
    ids, _, _ = load_image_data(files(vg_copy).image_data)
    assert len(ids) == NUM_TRAIN + NUM_TEST and 1592 not in ids
    assert len(read(vg_copy, "test").records) == NUM_TEST


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ("{oops", "not readable JSON"),
        ('{"idx_to_label": {"1": "a"}}', r"lacks keys \['idx_to_predicate'\]"),
        ('{"idx_to_label": {"1": "a", "3": "b"}, "idx_to_predicate": {"1": "p"}}', "strings '1'..'2'"),
        ('{"idx_to_label": {"0": "a"}, "idx_to_predicate": {"1": "p"}}', "strings '1'..'1'"),
        ('{"idx_to_label": {"1": "a", "2": "a"}, "idx_to_predicate": {"1": "p"}}', "distinct"),
    ],
)  # fmt: skip
def test_dicts_errors(tmp_path, content, match):
    path = tmp_path / "dicts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_vg_dicts(path)


def test_dicts_are_read_in_index_order(tiny_vg):
    vocab = load_vg_dicts(files(tiny_vg).dicts)
    synthetic = read_data_file("synthetic_classes.json")
    assert vocab.object_classes == tuple(synthetic["thing_classes"] + synthetic["stuff_classes"])
    assert vocab.predicate_classes == tuple(synthetic["predicate_classes"])


def test_unreadable_h5_and_bad_arguments(vg_copy):
    f = files(vg_copy)
    f.h5.write_bytes(b"not an h5 file")
    with pytest.raises(DatasetError, match="h5 file unreadable"):
        read(vg_copy, "test")
    f.h5.unlink()
    with pytest.raises(DatasetError, match="h5 file not found"):
        read(vg_copy, "test")


def test_reader_argument_checks(tiny_vg):
    f = files(tiny_vg)
    with VGReader(f.h5, f.dicts, f.image_data, f.image_root) as reader:
        with pytest.raises(ValueError, match="split"):
            reader.split_indices("dev")
        with pytest.raises(ValueError, match="on_error"):
            next(reader.iter_split("test", on_error="ignore"))
        it = reader.iter_split("test")  # lazy: one record at a time
        assert next(it).index == NUM_TRAIN
    with pytest.raises(ValueError, match="size_mismatch"):
        VGReader(f.h5, f.dicts, f.image_data, f.image_root, size_mismatch="warn")


# --- shipped VG-150 data files ----------------------------------------------------------------------------


def test_shipped_vg150_class_and_split_files():
    classes, split = read_data_file("vg_classes.json"), read_data_file("vg_split.json")
    assert "_about" in classes and "_about" in split
    objects, predicates = classes["thing_classes"], classes["predicate_classes"]
    assert len(objects) == 150 and len(predicates) == 50 and classes["stuff_classes"] == []
    assert objects[:3] == ["airplane", "animal", "arm"] and objects[-1] == "zebra"
    assert predicates[0] == "above" and predicates[-1] == "with"
    # OvR: 15 novel predicates, 1-based ids of the reference notes
    assert sorted(predicates.index(p) + 1 for p in split["novel_predicates"]) == [
        7, 9, 14, 16, 22, 30, 31, 34, 36, 37, 38, 39, 45, 46, 49]  # fmt: skip
    assert len(split["novel_objects"]) == 45 and set(split["novel_objects"]) <= set(objects)
    assert set(split["novel_to_base"]) == set(split["novel_objects"])
    base = set(objects) - set(split["novel_objects"])
    assert all(set(v) <= base for v in split["novel_to_base"].values())
    assert split["novel_to_base"]["car"] == ["vehicle"] and split["novel_to_base"]["bed"] == []
