"""psg.json reading and per-record validation (the stage-level corruption tests are in tests/stages)."""

import copy
import json
import os
import signal
import struct
import zlib
from contextlib import contextmanager

import pytest

from pipeline.datasets.classes import ClassLists
from pipeline.datasets.prepare import validate_all
from pipeline.datasets.psg import DatasetError, check_relative_path, load_psg_json, validate_record
from pipeline.datasets.splits import load_split

SIZES = (10, 16, 10)  # synthetic: things, objects, predicates


def _first(root):
    return json.loads((root / "psg.json").read_text())["data"][0]


def test_load_psg_json(tiny_dataset):
    psg = load_psg_json(tiny_dataset / "psg.json")
    assert len(psg.records) == 10 and len(psg.test_image_ids) == 4
    assert len(psg.thing_classes) == 10 and len(psg.predicate_classes) == 10


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ("{not json", "not readable JSON"),
        ("[]", "JSON object"),
        ('{"data": []}', "lacks top-level keys"),
        ('{"thing_classes": [], "stuff_classes": [], "predicate_classes": [1], "test_image_ids": [], "data": []}',
         "list of names"),
    ],
)  # fmt: skip
def test_load_psg_json_file_errors(tmp_path, content, match):
    path = tmp_path / "psg.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=match) as err:
        load_psg_json(path)
    assert str(path) in str(err.value)


def test_valid_record_gives_clean_index_record(tiny_dataset):
    raw = _first(tiny_dataset)
    rec, dups = validate_record(raw, tiny_dataset, *SIZES)
    assert dups == 0
    assert rec.image_id == raw["image_id"] and rec.segment_ids == [s["id"] for s in raw["segments_info"]]
    assert rec.relations == raw["relations"] and len(rec.bboxes) == len(rec.segment_ids)
    assert rec.isthing == [bool(s["isthing"]) for s in raw["segments_info"]]
    masks = rec.load_panoptic()
    assert masks.shape == (len(rec.segment_ids), 64, 64) and masks.any(axis=(1, 2)).all()


def test_duplicate_triplets_are_removed_and_counted(tiny_dataset):
    raw = copy.deepcopy(_first(tiny_dataset))
    first = raw["relations"][0]
    raw["relations"] = [*raw["relations"], list(first), list(first)]
    rec, dups = validate_record(raw, tiny_dataset, *SIZES)
    assert dups == 2
    assert rec.relations == _first(tiny_dataset)["relations"]  # order kept, first occurrence kept


def test_same_pair_with_two_predicates_is_not_a_duplicate(tiny_dataset):
    raw = copy.deepcopy(_first(tiny_dataset))
    s, o, p = raw["relations"][0]
    raw["relations"].append([s, o, (p + 1) % 10])
    rec, dups = validate_record(raw, tiny_dataset, *SIZES)
    assert dups == 0 and len(rec.relations) == len(raw["relations"])


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../x.png", "escapes"),
        ("a/../../x.png", "escapes"),
        ("..\\x.png", "escapes"),
        ("/etc/passwd", "absolute"),
        ("C:\\data\\x.png", "absolute"),
        ("", "non-empty"),
        (7, "non-empty string"),
    ],
)
def test_paths_must_stay_inside_root(name, match):
    with pytest.raises(DatasetError, match=match) as err:
        check_relative_path(name, "file_name", "42")
    assert err.value.image_id == "42" and "image 42" in str(err.value)


def test_ordinary_relative_paths_pass():
    assert check_relative_path("train2017/000000417720.jpg", "file_name", "1") == "train2017/000000417720.jpg"
    assert check_relative_path("a/./b..c.png", "file_name", "1") == "a/./b..c.png"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("relations"), "lacks 'relations'"),
        (lambda r: r.update(image_id=None), "no 'image_id'"),
        (lambda r: r.update(height=0), "positive integers"),
        (lambda r: r["segments_info"][0].update(isthing=1 - r["segments_info"][0]["isthing"]), "contradicts"),
        (lambda r: r["segments_info"][1].update(id=r["segments_info"][0]["id"]), "unique"),
        (lambda r: r["annotations"][0].update(category_id=r["annotations"][0]["category_id"] + 1), "differs"),
        (lambda r: r["annotations"][0].update(bbox=[5, 5, 1, 9]), "bbox"),
        (lambda r: r["relations"].append([0, 1]), "subject, object, predicate"),
        (lambda r: r["relations"].append([-1, 0, 0]), "segment index out of range"),
        (lambda r: r["relations"].append([0, 1, 1.0]), "integers"),
    ],
)
def test_record_level_errors(tiny_dataset, mutate, match):
    raw = copy.deepcopy(_first(tiny_dataset))
    mutate(raw)
    with pytest.raises(DatasetError, match=match):
        validate_record(raw, tiny_dataset, *SIZES)

# ------------------------------------------------------------------------------------ hostile and corrupt inputs
@contextmanager
def _no_hang(seconds: int = 20):
    """Fail (SIGALRM) instead of hanging the suite if a read blocks."""

    def _alarm(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit RGB (and whose pixel data is empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _psg(root, records):
    raw = json.loads((root / "psg.json").read_text())
    raw["data"] = records
    (root / "psg.json").write_text(json.dumps(raw))
    return load_psg_json(root / "psg.json")


def _classes(psg):
    return ClassLists(tuple(psg.thing_classes), tuple(psg.stuff_classes), tuple(psg.predicate_classes),
                      tuple(psg.stuff_classes))  # fmt: skip


def test_deeply_nested_psg_json_is_a_named_dataset_error(tmp_path):
    path = tmp_path / "psg.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DatasetError, match="nested too deeply") as err:
        load_psg_json(path)
    assert str(path) in str(err.value)


def test_psg_json_that_is_a_pipe_or_folder_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "psg.json")
    with _no_hang(), pytest.raises(DatasetError, match=r"not a regular file \(a named pipe\)"):
        load_psg_json(tmp_path / "psg.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DatasetError, match=r"not a regular file \(a folder\)"):
        load_psg_json(tmp_path / "dir.json")


def test_test_image_ids_must_be_ids(tmp_path):
    path = tmp_path / "psg.json"
    path.write_text(json.dumps({"thing_classes": [], "stuff_classes": [], "predicate_classes": [],
                                "test_image_ids": [[[1]]], "data": []}))  # fmt: skip
    with pytest.raises(DatasetError, match="'test_image_ids' must be a list of image ids"):
        load_psg_json(path)


@pytest.mark.parametrize("key", ["pan_seg_file_name", "file_name"])
def test_decompression_bomb_header_names_the_image_and_file(dataset_copy, key):
    raw = _first(dataset_copy)
    target = dataset_copy / raw[key]
    target.write_bytes(_png_header(20000, 20000))
    with pytest.raises(DatasetError, match="decompression bomb") as err:
        validate_record(raw, dataset_copy, *SIZES)
    assert err.value.image_id == str(raw["image_id"]) and err.value.path == str(target)
    assert f"image {raw['image_id']}:" in str(err.value) and str(target) in str(err.value)


def test_size_mismatch_is_found_on_the_header_before_decoding(dataset_copy):
    raw = _first(dataset_copy)
    (dataset_copy / raw["pan_seg_file_name"]).write_bytes(_png_header(640, 480))  # no pixel data at all
    with pytest.raises(DatasetError, match="panoptic PNG size 640x480 differs from the record's 64x64"):
        validate_record(raw, dataset_copy, *SIZES)


@pytest.mark.parametrize("key", ["file_name", "pan_seg_file_name"])
@pytest.mark.parametrize(("make", "kind"), [(os.mkfifo, "a named pipe"), (os.mkdir, "a folder")])
def test_image_paths_that_are_not_regular_files_are_refused_before_opening(dataset_copy, key, make, kind):
    raw = _first(dataset_copy)
    target = dataset_copy / raw[key]
    target.unlink()
    make(target)
    with _no_hang(), pytest.raises(DatasetError, match=f"not a regular file \\({kind}\\)") as err:
        validate_record(raw, dataset_copy, *SIZES)
    assert err.value.path == str(target) and err.value.image_id == str(raw["image_id"])


def test_symlinked_image_is_still_read(dataset_copy, tmp_path):
    raw = _first(dataset_copy)
    target = dataset_copy / raw["file_name"]
    moved = tmp_path / "elsewhere.png"
    target.rename(moved)
    target.symlink_to(moved)
    validate_record(raw, dataset_copy, *SIZES)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r["relations"].append([1, 1, 0]), r"= \[1, 1, 0\]: subject and object are the same"),
        (lambda r: r["segments_info"][0].update(iscrowd=2), r"segments_info\[0\] iscrowd must be 0 or 1, got 2"),
        (lambda r: r["segments_info"][0].update(isthing=[[[[0]]]]), r"isthing must be 0 or 1, got \[\[\[\.\.\.\]\]\]"),
        (lambda r: r.update(height=[[[[[1]]]]]), "height/width must be positive integers"),
        (lambda r: r.update(width=20000, height=20000), "exceeds PIL's limit"),
        (lambda r: r.update(file_name="a\0b.png"), "NUL character"),
        (lambda r: r.update(image_id=True), r"'image_id' must be a non-empty string or an integer, got True"),
    ],
)  # fmt: skip
def test_more_record_level_errors_name_the_image(tiny_dataset, mutate, match):
    raw = copy.deepcopy(_first(tiny_dataset))
    mutate(raw)
    with pytest.raises(DatasetError, match=match) as err:
        validate_record(raw, tiny_dataset, *SIZES, position=0)
    image_id = err.value.image_id
    assert str(err.value).startswith(f"image {image_id}:" if image_id else "data[0]:")


def test_crowd_segments_are_kept(tiny_dataset):
    raw = copy.deepcopy(_first(tiny_dataset))
    raw["segments_info"][0]["iscrowd"] = 1
    rec, _ = validate_record(raw, tiny_dataset, *SIZES)
    assert rec.segment_ids[0] == raw["segments_info"][0]["id"]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("1000000", "record must be a JSON object, got a string"),
        ([1, 2], "record must be a JSON object, got an array"),
        (None, "record must be a JSON object, got null"),
        ({"file_name": "x.png"}, "record has no 'image_id'"),
        ({"image_id": [1]}, "record 'image_id' must be a non-empty string or an integer, got [1]"),
    ],
)
def test_records_without_an_id_are_named_by_their_position(tiny_dataset, record, reason):
    with pytest.raises(DatasetError) as err:
        validate_record(record, tiny_dataset, *SIZES, position=3)
    assert str(err.value) == f"data[3]: {reason}" and err.value.position == 3 and err.value.image_id is None


def test_prepare_names_the_position_and_the_file_and_skip_mode_skips_every_bad_record(dataset_copy):
    good = json.loads((dataset_copy / "psg.json").read_text())["data"]
    bomb = copy.deepcopy(good[1])
    (dataset_copy / bomb["pan_seg_file_name"]).write_bytes(_png_header(20000, 20000))
    pipe = copy.deepcopy(good[2])
    (dataset_copy / pipe["file_name"]).unlink()
    os.mkfifo(dataset_copy / pipe["file_name"])
    psg = _psg(dataset_copy, [good[0], "oops", bomb, {"no": "id"}, pipe, *good[3:]])
    split = load_split("synthetic", "closed")
    with pytest.raises(DatasetError) as err:
        validate_all(psg, dataset_copy, _classes(psg), split, "fail", progress=False)
    assert str(err.value) == f"data[1]: record must be a JSON object, got a string ({psg.path})"
    with _no_hang():
        records, report = validate_all(psg, dataset_copy, _classes(psg), split, "skip", progress=False)
    skipped = [(s["position"], s["image_id"]) for s in report["skipped"]]
    assert skipped == [(1, None), (2, str(bomb["image_id"])), (3, None), (4, str(pipe["image_id"]))]
    assert "decompression bomb" in report["skipped"][1]["reason"]
    assert "named pipe" in report["skipped"][3]["reason"]
    assert report["skipped"][0]["file"] == str(psg.path)
    assert sum(len(v) for v in records.values()) == len(good) - 2
    assert report["crowd_segments"] == 0


def test_prepare_counts_crowd_segments(dataset_copy):
    good = json.loads((dataset_copy / "psg.json").read_text())["data"]
    good[0]["segments_info"][0]["iscrowd"] = 1
    psg = _psg(dataset_copy, good)
    _, report = validate_all(psg, dataset_copy, _classes(psg), load_split("synthetic", "closed"), "fail",
                             progress=False)  # fmt: skip
    assert report["crowd_segments"] == 1


