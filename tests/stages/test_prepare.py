"""Stage ``prepare``: outputs, determinism, splits, and every validation failure on a corrupted dataset copy
(clear message naming the image id, no partial output, an earlier output left untouched)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.datasets.classes import load_class_lists, read_classes
from pipeline.datasets.index import read_index
from pipeline.datasets.psg import DatasetError
from pipeline.datasets.splits import load_split, read_split_file, usable_for_calibration
from pipeline.datasets.synthetic import generate_dataset
from stages import prepare

REPO = Path(__file__).resolve().parents[2]
TINY = {"num_train": 6, "num_test": 4, "image_size": 64, "min_objects": 2, "max_objects": 5}


def _params(source="synthetic", split="closed", on_error="fail", psg_json=None, image_root=None, seed=0):
    return SimpleNamespace(
        data=SimpleNamespace(source=source, split=split, on_error=on_error, psg_json=psg_json, image_root=image_root),
        prepare=SimpleNamespace(seed=seed, synthetic=SimpleNamespace(image_format="png", **TINY)),
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


def test_module_entry_point(tmp_path):
    params = ("data: {source: synthetic}\nprepare:\n  seed: 2\n  synthetic: {num_train: 2, num_test: 1, "
              "image_size: 48, min_objects: 2, max_objects: 3}\n")  # fmt: skip
    (tmp_path / "params.yaml").write_text(params)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 train / 1 test images" in proc.stdout
    assert len(read_index(tmp_path / "data" / "prepared" / "index" / "train.parquet")) == 2
