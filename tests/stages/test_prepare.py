"""Stage ``prepare``: outputs, determinism, splits, and every validation failure on a corrupted dataset copy
(clear message naming the image id, no partial output, an earlier output left untouched)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from pipeline.datasets import prepare_vg
from pipeline.datasets.classes import load_class_lists, read_classes, read_data_file
from pipeline.datasets.index import INDEX_VERSION, AnnotationError, index_metadata, read_index
from pipeline.datasets.psg import DatasetError
from pipeline.datasets.splits import load_split, read_split_file, usable_for_calibration
from pipeline.datasets.synthetic import generate_dataset, generate_scene
from pipeline.datasets.synthetic_vg import generate_vg_dataset, scene_boxes
from stages import prepare

REPO = Path(__file__).resolve().parents[2]
TINY = {"num_train": 6, "num_test": 4, "image_size": 64, "min_objects": 2, "max_objects": 5}
TINY_VG = {"num_train": 12, "num_test": 6, "image_size": 64, "min_objects": 2, "max_objects": 5}


def _params(source="synthetic", split="closed", on_error="fail", psg_json=None, image_root=None, seed=0,
            vg_h5=None, vg_dicts=None, vg_image_data=None, image_format="png", synthetic=TINY,
            vg_filter_non_overlap=True):  # fmt: skip
    data = SimpleNamespace(source=source, split=split, on_error=on_error, psg_json=psg_json, image_root=image_root,
                           vg_h5=vg_h5, vg_dicts=vg_dicts, vg_image_data=vg_image_data,
                           vg_filter_non_overlap=vg_filter_non_overlap)  # fmt: skip
    return SimpleNamespace(
        data=data, prepare=SimpleNamespace(seed=seed, synthetic=SimpleNamespace(image_format=image_format, **synthetic))
    )


def _run(params, out_dir):
    prepare.run(params, out_dir, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "coco"
    generate_dataset(root, seed=5, progress=False, **TINY)
    return root


@pytest.fixture
def coco(source_dataset, tmp_path):
    """A private copy of a PSG-format dataset; returns (root, psg dict, writer)."""
    root = tmp_path / "coco"
    shutil.copytree(source_dataset, root)
    psg = json.loads((root / "psg.json").read_text())

    def save():
        (root / "psg.json").write_text(json.dumps(psg))

    return root, psg, save


def test_synthetic_outputs_and_determinism(tmp_path):
    _run(_params(), tmp_path / "a" / "prepared")
    _run(_params(), tmp_path / "b" / "prepared")
    a, b = _files(tmp_path / "a" / "prepared"), _files(tmp_path / "b" / "prepared")
    assert a == b  # same seed, same bytes: dataset, index, json files
    for name in ("index/train.parquet", "index/test.parquet", "classes.json", "split.json", "report.json",
                 "dataset/psg.json"):  # fmt: skip
        assert name in a
    assert os.listdir(tmp_path / "a") == ["prepared"]  # no temporary folder left
    train = read_index(tmp_path / "a" / "prepared" / "index" / "train.parquet")
    test = read_index(tmp_path / "a" / "prepared" / "index" / "test.parquet")
    assert len(train) == 6 and len(test) == 4
    assert train[0].load_image().shape == (64, 64, 3)
    report = json.loads(a["report.json"])
    assert report["train"]["images"] == 6 and report["test"]["relations"] == sum(len(r.relations) for r in test)
    classes = json.loads(a["classes.json"])
    assert classes["object_names"][:2] == ["red ball", "blue box"] and len(classes["predicate_classes"]) == 10
    assert read_classes(tmp_path / "a" / "prepared" / "classes.json") == load_class_lists("synthetic")

    _run(_params(seed=1), tmp_path / "c" / "prepared")
    assert _files(tmp_path / "c" / "prepared")["dataset/psg.json"] != a["dataset/psg.json"]


@pytest.mark.parametrize("split", ["closed", "ovr", "ovdr"])
def test_split_outputs(tmp_path, split):
    out = tmp_path / "prepared"
    _run(_params(split=split), out)
    expected = load_split("synthetic", split)
    written = json.loads((out / "split.json").read_text())
    assert written["split"] == split and set(written["novel_predicate_ids"]) == expected.novel_predicates
    assert set(written["novel_object_ids"]) == expected.novel_objects
    assert read_split_file(out / "split.json") == expected
    records = read_index(out / "index" / "train.parquet") + read_index(out / "index" / "test.parquet")
    flags = [r.usable_for_calibration for r in records]
    assert flags == [usable_for_calibration(r, expected) for r in records]
    if split == "closed":
        assert all(flags)
    else:
        assert not all(flags)


def test_psg_source_with_relative_root(coco, tmp_path, monkeypatch):
    root, _, _ = coco
    monkeypatch.chdir(tmp_path)
    _run(_params("psg", psg_json="coco/psg.json", image_root="coco"), Path("out/prepared"))
    assert not (tmp_path / "out" / "prepared" / "dataset").exists()
    monkeypatch.chdir(REPO)
    recs = read_index(tmp_path / "out" / "prepared" / "index" / "train.parquet")
    assert Path(recs[0].image_root).resolve() == root.resolve()
    assert recs[0].load_panoptic().shape[1:] == (64, 64)


def test_psg_source_split_needs_shipped_class_lists(coco, tmp_path):
    root, _, _ = coco
    with pytest.raises(DatasetError, match="class lists differ"):
        _run(_params("psg", "ovr", psg_json=str(root / "psg.json"), image_root=str(root)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_psg_source_with_own_class_lists_gets_readable_names(coco, tmp_path):
    root, psg, save = coco
    psg["stuff_classes"] = ["sky-other-merged", "wall-brick", *psg["stuff_classes"][2:]]
    save()
    _run(_params("psg", psg_json=str(root / "psg.json"), image_root=str(root)), tmp_path / "out")
    classes = read_classes(tmp_path / "out" / "classes.json")
    assert classes.stuff_classes[:2] == ("sky-other-merged", "wall-brick")
    assert classes.stuff_names == ("sky", "wall brick", *psg["stuff_classes"][2:])


# ------------------------------------------------------------------------------------------ corruptions
def _rec(psg, k=1):
    return psg["data"][k]


def _drop_last_segment(r):
    n = len(r["segments_info"]) - 1
    r["segments_info"].pop()
    r["annotations"].pop()
    r["relations"] = [x for x in r["relations"] if x[0] < n and x[1] < n]


CORRUPTIONS = {
    "missing image": (lambda root, r: (root / r["file_name"]).unlink(), "image file missing"),
    "unreadable image": (lambda root, r: (root / r["file_name"]).write_bytes(b"no image"), "image unreadable"),
    "truncated image": (
        lambda root, r: (root / r["file_name"]).write_bytes((root / r["file_name"]).read_bytes()[:300]),
        "image unreadable",
    ),
    "missing png": (lambda root, r: (root / r["pan_seg_file_name"]).unlink(), "panoptic PNG missing"),
    "unreadable png": (lambda root, r: (root / r["pan_seg_file_name"]).write_text("x"), "panoptic PNG unreadable"),
    "size mismatch": (lambda root, r: r.update(width=65), "differs from the record's 65x64"),
    "segment id absent from png": (lambda root, r: r["segments_info"][0].update(id=1), "absent from the panoptic PNG"),
    "png id absent from segments": (lambda root, r: _drop_last_segment(r), "absent from segments_info"),
    "annotations not parallel": (lambda root, r: r["annotations"].pop(), "not parallel"),
    "relation index out of range": (lambda root, r: r["relations"].append([0, 40, 0]), "segment index out of range"),
    "predicate out of range": (lambda root, r: r["relations"].append([0, 1, 10]), "predicate out of range"),
    "category out of range": (
        lambda root, r: (r["segments_info"][0].update(category_id=16), r["annotations"][0].update(category_id=16)),
        "category_id 16 out of range",
    ),
    "path escapes root": (lambda root, r: r.update(file_name="../outside.png"), "escapes the dataset root"),
    "absolute path": (lambda root, r: r.update(file_name=str(root / r["file_name"])), "absolute path"),
    "duplicate image id": (lambda root, r: r.update(image_id="1000000"), "occurs twice"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corruption_fails_cleanly(coco, tmp_path, kind):
    root, psg, save = coco
    shutil.copy(root / _rec(psg)["file_name"], tmp_path / "outside.png")  # exists, but outside the root
    corrupt, reason = CORRUPTIONS[kind]
    image_id = _rec(psg)["image_id"]
    corrupt(root, _rec(psg))
    save()
    out = tmp_path / "out" / "prepared"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous run")
    with pytest.raises(DatasetError) as err:
        _run(_params("psg", psg_json=str(root / "psg.json"), image_root=str(root)), out)
    msg = str(err.value)
    expected_id = "1000000" if kind == "duplicate image id" else image_id
    assert f"image {expected_id}:" in msg and reason in msg, msg
    assert os.listdir(tmp_path / "out") == ["prepared"]  # nothing partial, no temporary folder
    assert os.listdir(out) == ["old.txt"]  # the earlier output is untouched


def test_skip_writes_report(coco, tmp_path):
    root, psg, save = coco
    (root / _rec(psg, 1)["file_name"]).unlink()
    _rec(psg, 7)["relations"].append([0, 1, 99])
    dup = _rec(psg, 2)["relations"][0]
    _rec(psg, 2)["relations"] += [list(dup), list(dup)]
    save()
    out = tmp_path / "prepared"
    _run(_params("psg", on_error="skip", psg_json=str(root / "psg.json"), image_root=str(root)), out)
    report = json.loads((out / "report.json").read_text())
    assert report["num_skipped"] == 2
    skipped = {s["image_id"]: s for s in report["skipped"]}
    assert set(skipped) == {_rec(psg, 1)["image_id"], _rec(psg, 7)["image_id"]}
    assert skipped[_rec(psg, 1)["image_id"]]["reason"] == "image file missing"
    assert skipped[_rec(psg, 1)["image_id"]]["file"].endswith(_rec(psg, 1)["file_name"])
    assert "predicate out of range" in skipped[_rec(psg, 7)["image_id"]]["reason"]
    assert report["duplicates_removed"] == 2 and report["duplicates_by_image"] == {_rec(psg, 2)["image_id"]: 2}
    train = read_index(out / "index" / "train.parquet")
    test = read_index(out / "index" / "test.parquet")
    assert len(train) + len(test) == 8 and report["train"]["images"] + report["test"]["images"] == 8
    kept = {r.image_id: r for r in train + test}
    assert kept[_rec(psg, 2)["image_id"]].relations == _rec(psg, 2)["relations"][:-2]


@pytest.mark.parametrize("source, fmt, expect", [("synthetic", "png", " segments, "),
                                                  ("synthetic-vg", "jpg", " boxes, ")])
def test_module_entry_point(tmp_path, source, fmt, expect):
    params = (f"data: {{source: {source}}}\nprepare:\n  seed: 2\n  synthetic: {{num_train: 2, num_test: 1, "
              f"image_size: 64, min_objects: 2, max_objects: 3, image_format: {fmt}}}\n")  # fmt: skip
    (tmp_path / "params.yaml").write_text(params)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 train / 1 test images" in proc.stdout and expect in proc.stdout
    index = tmp_path / "data" / "prepared" / "index"
    assert len(read_index(index / "train.parquet")) == 2
    assert read_index(index / "test.parquet")[0].annotation == ("boxes" if source == "synthetic-vg" else "panoptic")


def test_jpg_images_need_synthetic_vg(tmp_path):
    with pytest.raises(ValueError, match="image_format=jpg needs data.source=synthetic-vg"):
        _run(_params(image_format="jpg"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ synthetic-vg / vg
def _vg_params(split="closed", seed=0, image_format="png", **kw):
    return _params("synthetic-vg", split, seed=seed, image_format=image_format, synthetic=TINY_VG, **kw)


def test_synthetic_vg_outputs_and_determinism(tmp_path):
    _run(_vg_params(), tmp_path / "a" / "prepared")
    _run(_vg_params(), tmp_path / "b" / "prepared")
    out = tmp_path / "a" / "prepared"
    a, b = _files(out), _files(tmp_path / "b" / "prepared")
    assert a == b  # same seed, same bytes: the VG triple, images, index and json files
    for name in ("index/train.parquet", "index/test.parquet", "classes.json", "split.json", "report.json",
                 "dataset/VG-SGG.h5", "dataset/VG-SGG-dicts.json", "dataset/image_data.json",
                 "dataset/VG_100K/2000000.png"):  # fmt: skip
        assert name in a, name
    assert os.listdir(tmp_path / "a") == ["prepared"]
    meta = index_metadata(out / "index" / "train.parquet")
    assert meta["annotation"] == "boxes" and meta["source"] == "synthetic-vg" and meta["index_version"] == INDEX_VERSION
    assert meta["image_root"] == "../dataset/VG_100K"  # relative: the folder can move
    train, test = read_index(out / "index" / "train.parquet"), read_index(out / "index" / "test.parquet")
    report = json.loads(a["report.json"])
    assert report["source"] == "synthetic-vg" and report["annotation"] == "boxes"
    assert report["vg"]["num_val"] == 0 and report["vg"]["val_images"] == 0  # no val part: every split-0 image
    assert report["vg"]["train"]["images_selected"] == 12 and report["vg"]["test"]["images_selected"] == 6
    assert report["train"]["images"] == len(train) > 0 and report["test"]["images"] == len(test) == 6
    assert report["train"]["segments"] == sum(len(r.category_ids) for r in train)  # segments = boxes
    assert report["test"]["relations"] == sum(len(r.relations) for r in test)
    assert json.loads(a["classes.json"])["source"] == "synthetic-vg"
    assert read_classes(out / "classes.json") == load_class_lists("synthetic")
    assert read_split_file(out / "split.json") == load_split("synthetic", "closed")
    for rec in train + test:
        assert rec.annotation == "boxes" and rec.pan_seg_file_name == "" and rec.segment_ids == []
        assert rec.file_name == f"{rec.image_id}.png" and rec.load_image().shape == (64, 64, 3)
        assert rec.isthing == [c < 10 for c in rec.category_ids]
        regions = rec.load_regions()
        assert regions.shape == (len(rec.category_ids), 64, 64) and regions.any(axis=(1, 2)).all()
        with pytest.raises(AnnotationError, match="load_regions"):
            rec.load_panoptic()
    # test records are the scenes' boxes with every relation (several predicates per pair included)
    for i, rec in enumerate(test):
        boxes, labels, relations = scene_boxes(generate_scene(np.random.default_rng([0, 1, i]), 64, 2, 5))
        assert rec.image_id == str(2_000_000 + i) and rec.category_ids == labels.tolist()
        np.testing.assert_array_equal(rec.bboxes, boxes)
        assert rec.relations == relations.tolist()
    assert any(len({(s, o) for s, o, _ in r.relations}) < len(r.relations) for r in test)
    # train: one predicate per pair, overlapping boxes only
    assert all(len({(s, o) for s, o, _ in r.relations}) == len(r.relations) for r in train)
    assert report["vg"]["train"]["relations_removed_non_overlap"] > 0

    _run(_vg_params(seed=1), tmp_path / "c" / "prepared")
    assert _files(tmp_path / "c" / "prepared")["dataset/VG-SGG.h5"] != a["dataset/VG-SGG.h5"]


def test_synthetic_vg_jpg_images(tmp_path):
    _run(_vg_params(image_format="jpg"), tmp_path / "prepared")
    rec = read_index(tmp_path / "prepared" / "index" / "test.parquet")[0]
    assert rec.file_name == "2000000.jpg" and rec.load_image().shape == (64, 64, 3)


@pytest.fixture(scope="module")
def synthetic_vg_closed(tmp_path_factory):
    out = tmp_path_factory.mktemp("svg") / "prepared"
    _run(_vg_params(), out)
    return out


@pytest.mark.parametrize("split", ["ovr", "ovdr"])
def test_synthetic_vg_open_vocab_filters_train_only(synthetic_vg_closed, tmp_path, split):
    out = tmp_path / "prepared"
    _run(_vg_params(split), out)
    expected = load_split("synthetic", split)
    assert read_split_file(out / "split.json") == expected
    train, test = read_index(out / "index" / "train.parquet"), read_index(out / "index" / "test.parquet")
    closed_train = read_index(synthetic_vg_closed / "index" / "train.parquet")
    closed_test = read_index(synthetic_vg_closed / "index" / "test.parquet")

    def novel_predicates(recs):
        return sum(r[2] in expected.novel_predicates for rec in recs for r in rec.relations)

    def novel_objects(recs):
        return sum(c in expected.novel_objects for rec in recs for c in rec.category_ids)

    assert novel_predicates(closed_train) > 0 and novel_predicates(train) == 0  # removed from training

    def content(recs):
        return [(r.image_id, r.category_ids, r.bboxes, r.relations) for r in recs]

    assert novel_predicates(test) > 0 and content(test) == content(closed_test)  # test keeps everything
    report = json.loads((out / "report.json").read_text())["vg"]
    assert report["open_vocab_mode"] == split and report["train"]["relations_removed_ovr"] > 0
    if split == "ovdr":  # novel boxes relabelled through novel_to_base, the star (empty list) removed
        assert novel_objects(closed_train) > 0 and novel_objects(train) == 0 and novel_objects(test) > 0
        assert report["train"]["boxes_removed_ovd"] > 0 and report["train"]["boxes_relabelled_ovd"] > 0
        assert report["novel_to_base_relabelling"]
    else:  # OvR never touches boxes
        boxes = {r.image_id: r.category_ids for r in closed_train}
        assert all(r.category_ids == boxes[r.image_id] for r in train)
    assert all(r.usable_for_calibration for r in train)
    assert [r.usable_for_calibration for r in test] == [usable_for_calibration(r, expected) for r in test]
    assert not all(r.usable_for_calibration for r in test)


@pytest.fixture(scope="module")
def vg_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("vgsrc") / "vg"
    generate_vg_dataset(root, seed=5, progress=False, **TINY)  # 6 train (h5 0-5), 4 test (h5 6-9), JPEG
    return root


@pytest.fixture
def vg(vg_source, tmp_path):
    """A private copy of a VG-format triple; returns (root, params kwargs)."""
    root = tmp_path / "vg"
    shutil.copytree(vg_source, root)
    return root, {"vg_h5": str(root / "VG-SGG.h5"), "vg_dicts": str(root / "VG-SGG-dicts.json"),
                  "vg_image_data": str(root / "image_data.json"), "image_root": str(root / "VG_100K")}  # fmt: skip


def test_vg_source_reads_the_triple_with_the_standard_val_part(vg, tmp_path, monkeypatch):
    root, paths = vg
    monkeypatch.chdir(tmp_path)
    rel = {**paths, "image_root": "vg/VG_100K"}
    _run(_params("vg", **rel), Path("out/prepared"))
    out = tmp_path / "out" / "prepared"
    assert not (out / "dataset").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["vg"]["num_val"] == 5000 and report["vg"]["val_images"] == 6  # all 6 split-0 images are val
    assert report["train"]["images"] == 0 and report["test"]["images"] == 4 and report["num_records"] == 10
    monkeypatch.chdir(REPO)
    test = read_index(out / "index" / "test.parquet")
    assert Path(test[0].image_root).resolve() == (root / "VG_100K").resolve()
    assert test[0].file_name == "2000000.jpg" and test[0].load_image().shape == (64, 64, 3)
    # closed with a vocabulary other than VG-150: the file's lists, every object a thing
    classes = read_classes(out / "classes.json")
    assert classes.thing_classes == load_class_lists("synthetic").object_classes and classes.stuff_classes == ()
    assert all(all(r.isthing) for r in test)


def test_vg_source_open_vocab_split_needs_the_vg150_lists(vg, tmp_path):
    _, paths = vg
    with pytest.raises(DatasetError, match="differ from the vg lists shipped") as err:
        _run(_params("vg", "ovr", **paths), tmp_path / "out")
    assert "VG-SGG-dicts.json" in str(err.value)
    assert not (tmp_path / "out").exists()


def _vg150_dicts(root: Path) -> None:
    classes = read_data_file("vg_classes.json")
    names = {"idx_to_label": {str(i + 1): n for i, n in enumerate(classes["thing_classes"])},
             "idx_to_predicate": {str(i + 1): n for i, n in enumerate(classes["predicate_classes"])}}  # fmt: skip
    (root / "VG-SGG-dicts.json").write_text(json.dumps(names))


def test_vg_source_with_vg150_lists_uses_the_ovsgtr_split(vg, tmp_path, monkeypatch):
    """Labels 1..16 and predicates 1..10 renamed to the first VG-150 names: bench (-> seat) and bike (-> vehicle,
    motorcycle) are novel with base targets (relabelled), bed has none (removed); attached to, belonging to are
    novel predicates."""
    root, paths = vg
    _vg150_dicts(root)
    monkeypatch.setitem(prepare_vg.NUM_VAL_BY_SOURCE, "vg", 0)  # the tiny triple has no 5,000 val images
    _run(_params("vg", "ovdr", **paths), tmp_path / "ovdr")
    _run(_params("vg", "closed", **paths), tmp_path / "closed")
    classes, split = load_class_lists("vg"), load_split("vg", "ovdr")
    assert read_classes(tmp_path / "ovdr" / "classes.json") == classes
    assert read_split_file(tmp_path / "ovdr" / "split.json") == split
    train = read_index(tmp_path / "ovdr" / "index" / "train.parquet")
    closed = read_index(tmp_path / "closed" / "index" / "train.parquet")
    relabel = {classes.object_classes.index(n) for n in ("bench", "bike")}
    assert any(c in relabel for r in closed for c in r.category_ids)
    assert not any(c in split.novel_objects for r in train for c in r.category_ids)
    assert not any(p in split.novel_predicates for r in train for _, _, p in r.relations)
    targets = {classes.object_classes.index(n) for n in ("seat", "vehicle", "motorcycle")}
    assert any(c in targets for r in train for c in r.category_ids)  # relabelled through novel_to_base
    report = json.loads((tmp_path / "ovdr" / "report.json").read_text())["vg"]
    assert report["novel_to_base_relabelling"] and report["train"]["boxes_relabelled_ovd"] > 0
    test = read_index(tmp_path / "ovdr" / "index" / "test.parquet")
    assert any(c in split.novel_objects for r in test for c in r.category_ids)


def _set_h5(key, row, col, value):
    def change(root: Path) -> None:
        with h5py.File(root / "VG-SGG.h5", "r+") as h5:
            first = int(h5["img_to_first_box"][row])  # the image's first box (row: h5 image index)
            h5[key][first, col] = value

    return change


VG_CORRUPTIONS = {  # test image 1 (h5 index 7, image id 2000001)
    "box width 0": (_set_h5("boxes_1024", 7, 2, 0), "has width or height <= 0"),
    "label out of range": (_set_h5("labels", 7, 0, 99), "outside the vocabulary 1..16"),
    "missing image": (lambda root: (root / "VG_100K" / "2000001.jpg").unlink(), "image file missing"),
    "truncated image": (lambda root: (root / "VG_100K" / "2000001.jpg").write_bytes(b"\xff\xd8"), "unreadable"),
}


@pytest.mark.parametrize("kind", list(VG_CORRUPTIONS))
def test_vg_corruption_fails_naming_the_image_or_is_skipped(vg, tmp_path, kind):
    root, paths = vg
    corrupt, reason = VG_CORRUPTIONS[kind]
    corrupt(root)
    out = tmp_path / "out" / "prepared"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous run")
    with pytest.raises(DatasetError) as err:
        _run(_params("vg", **paths), out)
    msg = str(err.value)
    assert msg.startswith("image 2000001: h5 index 7:") and reason in msg, msg
    assert "data.on_error: skip" in err.value.hint
    assert os.listdir(tmp_path / "out") == ["prepared"] and os.listdir(out) == ["old.txt"]

    _run(_params("vg", on_error="skip", **paths), out)
    report = json.loads((out / "report.json").read_text())
    assert report["num_skipped"] == 1 and report["vg"]["test"]["images_skipped"] == 1
    (skipped,) = report["skipped"]
    assert skipped["image_id"] == "2000001" and skipped["index"] == 7 and skipped["split"] == "test"
    assert reason in skipped["reason"]
    assert skipped["file"].endswith("2000001.jpg" if "image" in kind else "VG-SGG.h5")
    test = read_index(out / "index" / "test.parquet")
    assert [r.image_id for r in test] == ["2000000", "2000002", "2000003"]


def test_vg_duplicate_image_id_is_a_record_error(vg, tmp_path):
    root, paths = vg
    data = json.loads((root / "image_data.json").read_text())
    data[8]["image_id"] = data[7]["image_id"]  # both read 2000001.jpg (same size)
    (root / "image_data.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="image 2000001: h5 index 8: image_id occurs twice"):
        _run(_params("vg", **paths), tmp_path / "a")
    _run(_params("vg", on_error="skip", **paths), tmp_path / "b")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [(s["image_id"], s["index"]) for s in report["skipped"]] == [("2000001", 8)]
    assert report["test"]["images"] == 3 and report["vg"]["test"]["images"] == 3


def test_vg_file_level_errors_always_fail(vg, tmp_path):
    root, paths = vg
    with h5py.File(root / "VG-SGG.h5", "r+") as h5:
        del h5["predicates"]
    with pytest.raises(DatasetError, match=r"h5 lacks datasets \['predicates'\]") as err:
        _run(_params("vg", on_error="skip", **paths), tmp_path / "out")
    assert str(root / "VG-SGG.h5") in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["vg_h5", "vg_dicts", "vg_image_data", "image_root"])
def test_vg_source_needs_every_path(vg, tmp_path, key):
    _, paths = vg
    with pytest.raises(ValueError, match=f"missing: data.{key}$"):
        _run(_params("vg", **{**paths, key: None}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vg_missing_file_or_folder_is_named(vg, tmp_path):
    root, paths = vg
    with pytest.raises(DatasetError, match="h5 file not found"):
        _run(_params("vg", **{**paths, "vg_h5": str(root / "nope.h5")}), tmp_path / "out")
    with pytest.raises(DatasetError, match="data.image_root is not a folder"):
        _run(_params("vg", **{**paths, "image_root": str(root / "nope")}), tmp_path / "out")



def test_vg_filter_non_overlap_switch(tmp_path):
    _run(_vg_params(), tmp_path / "on")
    _run(_vg_params(vg_filter_non_overlap=False), tmp_path / "off")
    on, off = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("on", "off"))
    assert on["vg"]["train"]["relations_removed_non_overlap"] > 0
    assert off["vg"]["train"]["relations_removed_non_overlap"] == 0
    assert off["train"]["relations"] > on["train"]["relations"]
    assert off["test"] == on["test"]  # the test split never drops a relation
