"""psg.json reading and per-record validation (the stage-level corruption tests are in tests/stages)."""

import copy
import json

import pytest

from pipeline.datasets.psg import DatasetError, check_relative_path, load_psg_json, validate_record

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
